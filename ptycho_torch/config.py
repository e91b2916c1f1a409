"""Typed, frozen configuration for every step.

One dataclass per section of the experiment YAML. Each field carries its
documentation, unit and allowed range in ``metadata``; ``config_factory``
validates user input against exactly this metadata, and ``config/README.md``
is checked against it by a test. There is no module-level mutable
configuration anywhere in the package: every function receives its config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def spec(default: Any, doc: str, unit: str = "", *, lo: float | None = None,
         hi: float | None = None, choices: tuple[Any, ...] | None = None,
         power_of_two: bool = False, path: bool = False) -> Any:
    """A dataclass field with its default, documentation and allowed values.

    ``path=True`` marks a string holding a file path (relative to the working
    directory; ``""`` = none) rather than a name.
    """
    return field(default=default, metadata={
        "doc": doc, "unit": unit, "lo": lo, "hi": hi, "choices": choices,
        "power_of_two": power_of_two, "path": path})


@dataclass(frozen=True)
class ObjectConfig:
    kind: str = spec("grf", "simulated object: Gaussian random field, PtychoPINN-style lines, or "
                     "an image file (`amplitude_file`, `phase_file`)",
                     choices=("grf", "lines", "image"))
    train_size_px: int = spec(168, "side of the square training object", "px", lo=16, hi=8192)
    test_size_px: int = spec(128, "side of the square test object", "px", lo=16, hi=8192)
    amplitude_min: float = spec(0.4, "lowest object amplitude (transmission)", lo=0.0, hi=1.0)
    amplitude_max: float = spec(1.0, "highest object amplitude (transmission)", lo=0.0, hi=1.0)
    phase_max_rad: float = spec(1.5, "object phase spans [-phase_max_rad, +phase_max_rad]", "rad",
                                lo=0.0, hi=3.14159)
    spectral_slope: float = spec(3.0, "power-law exponent of the random field's power spectrum "
                                 "(larger = smoother)", lo=0.5, hi=8.0)
    feature_size_px: float = spec(6.0, "smallest feature scale: spectrum cut-off (grf) or line "
                                  "blur (lines)", "px", lo=0.5, hi=64.0)
    amplitude_file: str = spec("", "image (PNG, TIFF or NPY) whose grey values, rescaled to "
                               "[amplitude_min, amplitude_max], give the object amplitude "
                               "(kind image)", path=True)
    phase_file: str = spec("", "optional image whose values, rescaled to [-phase_max_rad, "
                           "+phase_max_rad], give the object phase (kind image; empty = flat "
                           "phase)", path=True)


@dataclass(frozen=True)
class ProbeConfig:
    kind: str = spec("focused_disk", "probe model: field at `defocus_m` of a lens with a "
                     "circular (disk) pupil, a Gaussian beam, or a probe read from `file`",
                     choices=("focused_disk", "gaussian", "file"))
    pupil_radius_px: float = spec(6.0, "radius of the disk aperture's bright-field disk on the "
                                  "detector (focused_disk)", "detector px", lo=1.0, hi=512.0)
    defocus_m: float = spec(5.0e-3, "Fresnel propagation distance from focus (focused_disk, "
                            "gaussian)", "m", lo=-1.0, hi=1.0)
    fwhm_px: float = spec(8.0, "intensity FWHM of the Gaussian beam at its waist (gaussian)",
                          "object px", lo=1.0, hi=512.0)
    file: str = spec("", "probe file (kind file): CXI/HDF5 "
                     "/entry_1/instrument_1/source_1/illumination, PtychoPINN NPZ probeGuess or "
                     "NPY, complex N x N or K x N x N modes (K = `modes`)", path=True)
    given_defocus_m: float = spec(0.0, "error of the probe the file records, which the "
                                  "reconstruction is given (the patterns are simulated with the "
                                  "true one): propagated this much further", "m", lo=-0.1,
                                  hi=0.1)
    given_shift_px: float = spec(0.0, "error of the recorded probe: shifted this much along "
                                 "both axes", "object px", lo=-8.0, hi=8.0)
    given_amplitude_factor: float = spec(1.0, "error of the recorded probe: its amplitude times "
                                         "this", lo=0.1, hi=10.0)
    modes: int = spec(1, "partial coherence: incoherent probe modes whose intensities add "
                      "(1 = a coherent probe); further modes are the first one times low-order "
                      "Hermite polynomials, orthogonalised; the total power is the photon scale "
                      "of one mode", lo=1, hi=16)
    mode_power_ratio: float = spec(0.3, "power of each further probe mode relative to the one "
                                   "before (modes > 1): mode k holds r^k / sum_j r^j of the "
                                   "power", lo=0.001, hi=1.0)


@dataclass(frozen=True)
class ScanConfig:
    kind: str = spec("raster", "scan pattern: jittered raster, Fermat spiral, or uniform random "
                     "positions", choices=("raster", "fermat", "random"))
    step_px: float = spec(4.0, "distance between neighbouring scan positions (raster; the same "
                          "areal density for fermat and random)", "object px", lo=0.5, hi=512.0)
    jitter_px: float = spec(0.5, "uniform random offset added to each position, +- (raster, "
                            "fermat)", "object px", lo=0.0, hi=64.0)
    overlap: float = spec(0.0, "if > 0, overrides step_px: step = (1 - overlap) x the probe "
                          "diameter (disk holding 86.5 % of its intensity)", lo=0.0, hi=0.95)
    position_error_px: float = spec(0.0, "error of the positions the file records, which the "
                                    "reconstruction sees (the patterns are simulated at the "
                                    "true positions): Gaussian, this sigma per axis", "object px",
                                    lo=0.0, hi=16.0)
    position_scale_error: float = spec(0.0, "relative scale error of the recorded scan about its "
                                       "centre (0.01: recorded 1 % too large)", lo=-0.2, hi=0.2)
    position_rotation_error_deg: float = spec(0.0, "rotation of the recorded scan about its "
                                              "centre", "deg", lo=-10.0, hi=10.0)


@dataclass(frozen=True)
class DetectorConfig:
    beamstop_radius_px: float = spec(0.0, "radius of a central beamstop: pixels this close to "
                                     "the DC pixel record 0 counts and are masked (0 = none)",
                                     "detector px", lo=0.0, hi=512.0)
    bad_pixel_fraction: float = spec(0.0, "fraction of dead pixels, placed at random (seeded): "
                                     "they record 0 counts and are masked", lo=0.0, hi=0.5)
    saturation_counts: float = spec(0.0, "counts are clipped at this level, recorded in the "
                                    "file (0 = no saturation)", "photons", lo=0.0, hi=1.0e12)


@dataclass(frozen=True)
class DataConfig:
    source: str = spec("simulate", "where the data come from: simulated, or converted from "
                       "`train_file` and `test_file`", choices=("simulate", "file"))
    N: int = spec(32, "diffraction pattern / probe / object patch side", "px", lo=8, hi=1024,
                  power_of_two=True)
    nphotons: float = spec(1.0e6, "mean total counts per diffraction pattern", "photons",
                           lo=1.0, hi=1.0e12)
    energy_eV: float = spec(8000.0, "photon energy", "eV", lo=10.0, hi=1.0e6)
    detector_distance_m: float = spec(2.0, "sample to detector distance", "m", lo=1e-3, hi=1e3)
    detector_pixel_size_m: float = spec(75e-6, "detector pixel side", "m", lo=1e-7, hi=1e-2)
    train_file: str = spec("", "training data set to convert (source file): CXI, or a "
                           "PtychoPINN NPZ", path=True)
    test_file: str = spec("", "test data set to convert (source file): CXI, or a PtychoPINN "
                          "NPZ; empty = split train_file by test_fraction", path=True)
    test_fraction: float = spec(0.0, "source file without test_file: fraction of train_file's "
                                "scan positions held out as the test set (those with the "
                                "largest column positions); 0 = the test set is the training "
                                "scan itself", lo=0.0, hi=0.9)
    cxi_translation: str = spec("sample", "what /entry_1/sample_1/geometry_1/translation of a "
                                "CXI file from another program holds: the sample translation "
                                "(the CXI spec: probe position = minus it) or the probe position",
                                choices=("sample", "probe"))
    probe_rescale: bool = spec(True, "a data file's probe whose photon scale cannot explain "
                               "the counts (its brightest patterns hold more than its photons, "
                               "or under 5 % of them) is rescaled so that they hold exactly its "
                               "photons; the factor is recorded (off: the probe as given)")
    object: ObjectConfig = field(default_factory=ObjectConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    scan: ScanConfig = field(default_factory=ScanConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)


SIMULATION_ONLY = ("nphotons", "object", "probe", "scan", "detector")
"""The ``data`` keys only the simulation reads. With ``data.source: file`` they are neither
cross-checked (``config_factory``) nor hashed (``config_factory.config_hash``), and the
workflow's rules leave them out of their params: editing them reruns nothing."""


@dataclass(frozen=True)
class ModelConfig:
    generator: str = spec("cnn", "the network from amplitudes to object patches, a name "
                          "registered in ptycho_torch/generators.py: cnn = an encoder and two "
                          "decoders; unet = the same with skip connections; fno = a Fourier "
                          "neural operator (fno_modes, fno_layers) and a CNN refiner; all "
                          "shaped by n_filters_scale, amp_activation, pad_object and probe_big")
    n_filters_scale: int = spec(1, "width multiplier: cnn and unet encoder widths are 16, "
                                "32, 64 times this; fno: Fourier layers 32, refiner 16 times "
                                "this", lo=1, hi=8)
    amp_activation: str = spec("sigmoid", "activation of the amplitude head",
                               choices=("sigmoid", "softplus", "silu"))
    fno_modes: int = spec(8, "fno: Fourier modes kept along each axis by every spectral "
                          "convolution (at most data.N / 2)", lo=1, hi=512)
    fno_layers: int = spec(4, "fno: Fourier layers before the CNN refiner", lo=1, hi=16)
    gridsize: int = spec(2, "g: each sample groups C = g*g neighbouring scan positions", lo=1, hi=4)
    n_neighbours: int = spec(6, "K: group members are drawn from each anchor's K nearest "
                             "positions (itself included)", lo=2, hi=64)
    object_big: bool = spec(True, "overlap constraint: merge a group's C patches on one canvas "
                            "and re-extract them before the forward model")
    pad_object: bool = spec(False, "predict only the central N/2 x N/2 of each patch and "
                            "zero-pad (oversampled far field)")
    probe_big: bool = spec(False, "with pad_object: a second decoder path predicts the border "
                           "outside the central N/2 x N/2 (where the probe's tails still "
                           "illuminate the object) instead of zeros")
    probe_trainable: bool = spec(False, "the probe becomes a network parameter, initialised "
                                 "from the training data's probe and saved in model.pt "
                                 "(inference then uses the trained probe)")
    intensity_scale_trainable: bool = spec(False, "learn one global factor s of the predicted "
                                           "counts s^2 |F(P O)|^2 (initial s = 1; absorbs a "
                                           "probe whose photon scale is off)")
    probe_source: str = spec("given", "the probe the PINN trains and reconstructs with: the "
                             "data file's (given), or the probe of a short pty-chi run with "
                             "probe refinement on the training scan (iterative: the probe "
                             "warm-up, also correcting the positions with "
                             "iterative.position_correction; engine and batch size from "
                             "iterative.*)", choices=("given", "iterative"))
    probe_warmup_epochs: int = spec(30, "probe_source iterative: epochs of the warm-up",
                                    lo=1, hi=100000)


@dataclass(frozen=True)
class TrainingConfig:
    """How the network is trained: the loss, the optimiser's schedule, validation, limits."""
    mode: str = spec("pinn", "pinn = unsupervised physics loss on the counts; supervised = "
                     "PtychoNN-style baseline, same network, L1 loss on ground-truth patches",
                     choices=("pinn", "supervised"))
    epochs: int = spec(45, "passes over the training patterns (0 only with `init_model`: the "
                       "given model as it is)", lo=0, hi=100000)
    batch_size: int = spec(16, "patterns per optimiser step", lo=1, hi=65536)
    learning_rate: float = spec(1e-3, "Adam learning rate", lo=1e-7, hi=1.0)
    loss: str = spec("poisson", "Poisson NLL on counts, or MAE on amplitudes sqrt(counts)",
                     choices=("poisson", "mae"))
    max_minutes: float = spec(0.0, "stop training after this wall time (0 = no limit)", "min",
                              lo=0.0, hi=1.0e5)
    init_model: str = spec("", "fine-tuning: start from the weights of this model.pt (same "
                           "network: model.* and data.N, checked by validate); a resume state "
                           "of an interrupted run wins over it; empty = random weights",
                           path=True)
    lr_schedule: str = spec("cosine", "learning rate per epoch: constant; exponential or "
                            "cosine decay to learning_rate x lr_final_fraction at the last epoch; "
                            "plateau = multiply by plateau_factor when the validation loss (the "
                            "training loss without a validation split) stalls",
                            choices=("constant", "exponential", "cosine", "plateau"))
    lr_final_fraction: float = spec(0.05, "exponential, cosine: the learning rate reaches "
                                    "learning_rate x this after the last epoch; plateau: the "
                                    "lowest learning rate, as a fraction", lo=0.0, hi=1.0)
    warmup_epochs: int = spec(0, "linear warm-up from learning_rate / (warmup_epochs + 1) over "
                              "this many epochs before the schedule starts (not with plateau)",
                              lo=0, hi=100000)
    plateau_patience: int = spec(3, "plateau: the learning rate is reduced after more than "
                                 "this many epochs without a new best loss", lo=0, hi=100000)
    plateau_factor: float = spec(0.5, "plateau: factor applied to the learning rate",
                                 lo=0.01, hi=0.99)
    validation_fraction: float = spec(0.0, "fraction of the training scan positions held out "
                                      "(seeded) to compute a validation loss each epoch "
                                      "(0 = none)", lo=0.0, hi=0.5)
    early_stopping_patience: int = spec(0, "stop when the validation loss has not improved for "
                                        "this many epochs and keep the best epoch's weights "
                                        "(0 = off; needs validation_fraction > 0)",
                                        lo=0, hi=100000)
    grad_clip_norm: float = spec(0.0, "clip the gradient's global L2 norm to this before each "
                                 "step (0 = off)", lo=0.0, hi=1.0e6)
    n_groups: int = spec(0, "groups trained on per epoch, drawn (seeded) from the training "
                         "positions (0 = one group anchored at every position)", lo=0, hi=10**8)
    oversampling: bool = spec(False, "allow n_groups above the number of training positions: "
                              "anchors are reused, each time with a fresh draw of neighbours "
                              "(needs gridsize > 1)")


@dataclass(frozen=True)
class InferenceConfig:
    """How patches become one object: stitching, phase synchronisation, calibration, FRC."""
    stitch: str = spec("probe_weighted", "how overlapping patches are averaged",
                       choices=("probe_weighted", "uniform"))
    phase_sync: bool = spec(True, "synchronise the patches' global phases so that overlaps "
                            "agree (angular synchronisation; a single pattern does not measure "
                            "its patch's global phase)")
    calibration_iterations: int = spec(30, "at most this many L-BFGS steps fitting each "
                                       "patch's global phase and amplitude scale to the "
                                       "measured amplitudes (0 = off)", lo=0, hi=100000)
    calibration_tolerance: float = spec(1e-4, "stop the calibration earlier when a step lowers "
                                        "its loss by less than this fraction", lo=0.0, hi=1.0)
    half_data_frc: bool = spec(True, "estimate the resolution without ground truth: reconstruct "
                               "the two interleaved halves of the scan apart and compare them "
                               "(the half-data FRC; it costs about one more reconstruction)")
    calibration_patterns: str = spec("half", "the patterns the calibration fits: one "
                                     "interleaved half of the scan (half the cost; every patch "
                                     "still overlaps several of them) or all",
                                     choices=("half", "all"))


@dataclass(frozen=True)
class IterativeConfig:
    """The iterative reference reconstruction (pty-chi) of the test data, for comparison."""
    engine: str = spec("lsqml", "pty-chi engine: LSQML (least-squares maximum likelihood) or "
                       "ePIE", choices=("lsqml", "epie"))
    epochs: int = spec(100, "passes over the test patterns", lo=1, hi=100000)
    batch_size: int = spec(96, "patterns per object update (mini-batch)", lo=1, hi=65536)
    probe_refinement: bool = spec(False, "also refine the probe, starting from the known one "
                                  "(false: the data's probe is used as it is)")
    probe_modes: int = spec(0, "incoherent probe modes pty-chi fits (partial coherence): 0 = "
                            "as many as the data's probe has; fewer keeps the strongest (the "
                            "total power kept); more adds modes by pty-chi's Hermite "
                            "initialisation from the strongest and refines the probe", lo=0,
                            hi=16)
    position_correction: bool = spec(False, "also correct the scan positions (pty-chi's "
                                     "gradient position correction), starting from the "
                                     "recorded ones")
    target_psnr_db: float = spec(30.0, "quality target of the time-to-quality figure: the "
                                 "first checkpoint where amplitude and phase PSNR both reach "
                                 "it", "dB", lo=0.0, hi=200.0)
    half_data_frc: bool = spec(False, "estimate the resolution without ground truth: two more "
                               "pty-chi runs, one on each interleaved half of the scan, "
                               "compared by their FRC (metrics.json quality, quality.png); "
                               "costs about one more reconstruction, hence off. The R-factor "
                               "against the counts is always computed")


@dataclass(frozen=True)
class ExecutionConfig:
    """Where and how fast things run; never what is computed (beyond float determinism)."""
    device: str = spec("auto", "auto = CUDA when available, else CPU",
                       choices=("auto", "cpu", "cuda"))
    threads: int = spec(2, "CPU threads for torch (0 = torch's default)", lo=0, hi=1024)
    deterministic: bool = spec(True, "use deterministic algorithms")
    precision: str = spec("float32", "the network's precision in training and inference: "
                          "float32, or mixed precision (its layers under autocast in bfloat16, "
                          "CPU or CUDA, or float16, CUDA only, with loss scaling in training; "
                          "the physics and the loss stay float32)",
                          choices=("float32", "bfloat16", "float16"))
    workers: int = spec(0, "data-loader worker processes", lo=0, hi=64)
    inference_batch_size: int = spec(0, "groups per inference forward pass (0 = auto: on the "
                                     "CPU as many as keep the generator's largest activation "
                                     "within 16 MiB, 64 at N = 64 with the cnn; 256 on CUDA)", lo=0,
                                     hi=65536)


@dataclass(frozen=True)
class ExperimentConfig:
    experiment: str = spec("default", "experiment name: results/<experiment>/, reports/<run>/"
                           "<experiment>/")
    seed: int = spec(7, "master random seed (data, weights, batches)", lo=0, hi=2**31 - 1)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    iterative: IterativeConfig = field(default_factory=IterativeConfig)
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)


SCIENCE_SECTIONS = ("experiment", "seed", "data", "model", "training", "inference",
                    "iterative")
