"""Quality without ground truth (ptycho_torch.quality): the R-factor against the Poisson noise
level, the interleaved split, the half-data FRC and its 1/2-bit threshold.

Expected values come from independent arithmetic: the simulator's numpy forward model
(``simulate.expected_intensity``), Poisson pmf sums written out here, and the closed-form
threshold of van Heel & Schatz (2005).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import gammaln

from conftest import REPO, TINY
from ptycho_torch import grouping, physics, quality, simulate
from ptycho_torch.config import InferenceConfig, ObjectConfig
from ptycho_torch.config_factory import resolve_config
from ptycho_torch.dataset import PtychoData
from ptycho_torch.infer import predict_patches
from ptycho_torch.metrics import half_bit_threshold, score
from ptycho_torch.stitch import scanned_region, stitch
from ptycho_torch.train import train_model

N = 16


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def scene() -> dict:
    """A 48 px object, a disk probe carrying ~1e4 photons per pattern, and an 8 x 8 raster of
    integer positions (bilinear and Fourier sampling agree exactly there)."""
    obj = simulate.make_object(48, ObjectConfig(), np.random.default_rng(1))
    lam = physics.wavelength_m(8000.0)
    probe = physics.focused_disk_probe(N, 3.0, 5e-3, lam,
                                       physics.object_pixel_size_m(8000.0, 2.0, 75e-6, N))
    probe = probe.numpy() * math.sqrt(1.0e4)
    axis = np.arange(8.0, 37.0, 4.0)
    positions = np.stack(np.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2)
    expected = simulate.expected_intensity(obj, probe, positions).astype(np.float64)
    return {"obj": obj, "probe": probe, "positions": positions, "expected": expected}


def _poisson_moments(lam: np.ndarray, chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """E|sqrt(K) - sqrt(lam)| and E(sqrt(K) - sqrt(lam))^2 for K ~ Poisson(lam), by summing
    the pmf exp(k log lam - lam - log k!) over k = 0 .. lam + 15 sqrt(lam) + 30."""
    lam = np.maximum(lam.ravel(), 1e-300)
    m1, m2 = np.empty_like(lam), np.empty_like(lam)
    for s in range(0, lam.size, chunk):
        part = lam[s:s + chunk, None]
        k = np.arange(int(part.max() + 15 * math.sqrt(part.max()) + 30))[None, :]
        pmf = np.exp(k * np.log(part) - part - gammaln(k + 1))
        dev = np.abs(np.sqrt(k) - np.sqrt(part))
        m1[s:s + chunk], m2[s:s + chunk] = (pmf * dev).sum(1), (pmf * dev ** 2).sum(1)
    return m1, m2


def _r_factor_of_truth(scene: dict, counts: np.ndarray) -> dict:
    predicted = quality.predicted_counts(scene["obj"], scene["probe"], scene["positions"])
    return quality.r_factor(counts, predicted, np.ones(counts.shape, bool))


# ----------------------------------------------------------------- data consistency

def test_predicted_counts_match_the_simulator(scene):
    predicted = quality.predicted_counts(scene["obj"], scene["probe"], scene["positions"])
    assert np.allclose(predicted, scene["expected"], rtol=1e-4, atol=1e-6 * scene["expected"].max())


def test_r_factor_of_the_true_object_is_zero_on_noise_free_data(scene):
    r = _r_factor_of_truth(scene, scene["expected"])
    assert r["r_factor"] < 1e-5
    assert max(r["per_position"]) < 1e-5 and len(r["per_position"]) == len(scene["positions"])


def test_r_factor_of_the_true_object_matches_the_poisson_noise_level(scene):
    lam = scene["expected"]
    counts = np.random.default_rng(5).poisson(lam).astype(np.float64)
    r = _r_factor_of_truth(scene, counts)
    m1, m2 = _poisson_moments(lam)
    denominator = np.sqrt(counts).sum()
    expected, sigma = m1.sum() / denominator, math.sqrt((m2 - m1 ** 2).sum()) / denominator
    assert sigma < 0.01 * expected  # a sharp test: the band is 1 % of the value
    assert abs(r["r_factor"] - expected) < 5 * sigma
    assert r["r_factor_poisson_expected"] == pytest.approx(expected, rel=1e-3)
    assert r["r_factor_over_noise"] == pytest.approx(1.0, abs=5 * sigma / expected + 1e-3)
    # the band is narrow enough to catch a probe whose photon scale is 5 % off
    wrong = quality.r_factor(counts, 1.05 * quality.predicted_counts(
        scene["obj"], scene["probe"], scene["positions"]), np.ones(counts.shape, bool))
    assert wrong["r_factor"] - expected > 5 * sigma


def test_poisson_sqrt_deviation_against_pmf_sums_and_limits():
    lam = np.array([1e-8, 1e-4, 0.03, 0.7, 3.0, 42.0, 900.0, 2.5e4, 3e6])
    m1, _ = _poisson_moments(lam[:-1])
    table = quality.poisson_sqrt_deviation(lam)
    assert np.allclose(table[:-1], m1, rtol=2e-3)
    assert table[0] == pytest.approx(math.sqrt(1e-8), rel=1e-3)  # dark: E -> sqrt(lam)
    assert table[-1] == pytest.approx(1 / math.sqrt(2 * math.pi), rel=1e-5)  # bright limit


def test_masked_pixels_do_not_count(scene):
    counts = scene["expected"].copy()
    valid = np.ones(counts.shape, bool)
    valid[:, 7:9, 7:9] = False
    counts[:, 7:9, 7:9] = 0.0  # a beamstop: no counts, masked
    predicted = quality.predicted_counts(scene["obj"], scene["probe"], scene["positions"])
    assert quality.r_factor(counts, predicted, valid)["r_factor"] < 1e-5
    assert quality.r_factor(counts, predicted, np.ones(counts.shape, bool))["r_factor"] > 0.01


# ----------------------------------------------------------------- the split

def test_interleaved_halves_of_a_raster_are_a_checkerboard():
    index = np.stack(np.meshgrid(np.arange(10), np.arange(10), indexing="ij"), -1).reshape(-1, 2)
    pos = 10 + 4.0 * index + np.random.default_rng(0).uniform(-0.5, 0.5, index.shape)
    first = grouping.interleaved_halves(pos)
    assert first.sum() == 50
    # each position's row and column neighbours on the raster belong to the other half
    neighbours = np.abs(index[:, None] - index[None]).sum(-1) == 1
    assert neighbours.sum() == 2 * 2 * 10 * 9  # 180 neighbour pairs, counted twice
    assert np.all(first[:, None] != first[None, :], where=neighbours)


def test_interleaved_halves_of_a_spiral_both_span_the_scan():
    pos = simulate.fermat_positions(96, N, simulate.ScanConfig(jitter_px=0.0),
                                    np.random.default_rng(0), 4.0)
    first = grouping.interleaved_halves(pos)
    assert abs(first.mean() - 0.5) < 0.1
    for half in (pos[first], pos[~first]):
        assert np.all(np.abs(half.min(0) - pos.min(0)) < 4.5)
        assert np.all(np.abs(half.max(0) - pos.max(0)) < 4.5)


# ----------------------------------------------------------------- half-data FRC

def test_half_bit_threshold_follows_van_heel_and_schatz():
    shape = (40, 40)
    bit = half_bit_threshold(shape)
    fy, fx = np.meshgrid(np.fft.fftfreq(40), np.fft.fftfreq(40), indexing="ij")
    ring = np.rint(np.hypot(fy, fx) * 40).astype(int)
    n_r = np.bincount(ring.ravel())[:21]  # pixels per ring, rings 0 .. 20 (0.5 cycles/px)
    root = np.sqrt(n_r)
    assert np.allclose(bit, (0.2071 + 1.9102 / root) / (1.2071 + 0.9102 / root))
    assert bit[0] == pytest.approx(1.0, abs=1e-4)  # one pixel: no correlation is significant
    assert bit[-1] < 0.35 and np.all(bit > 0.2071 / 1.2071)  # tends to 0.1716


def test_half_frc_of_identical_halves_is_one(scene):
    a = scene["obj"][4:44, 4:44]
    rows, cols = np.meshgrid(np.arange(40), np.arange(40), indexing="ij")
    b = 0.8 * a * np.exp(1j * (0.7 + 0.03 * rows - 0.02 * cols))  # phase, ramp and scale
    out = quality.half_frc(a, b)
    assert np.allclose(out["frc"][1:], 1.0, atol=1e-6)
    assert out["frc_1_7_cycles_per_px"] == out["frc_half_bit_cycles_per_px"] == 0.5


def test_half_frc_falls_as_the_noise_of_the_halves_grows(scene):
    a = scene["obj"][4:44, 4:44]
    rng = np.random.default_rng(3)
    results = []
    for sigma in (0.01, 0.05, 0.2, 0.8):
        noisy = [a + sigma * (rng.standard_normal(a.shape) + 1j * rng.standard_normal(a.shape))
                 for _ in range(2)]
        results.append(quality.half_frc(*noisy))
    means = [np.mean(r["frc"][1:]) for r in results]
    assert all(x > y for x, y in zip(means, means[1:]))
    for key in ("frc_1_7_cycles_per_px", "frc_half_bit_cycles_per_px"):
        crossings = [r[key] for r in results]
        assert all(x >= y for x, y in zip(crossings, crossings[1:]))
        assert crossings[-1] < crossings[0]


def _scene_data(scene: dict, keep: slice = slice(None)) -> PtychoData:
    return PtychoData(counts=scene["expected"][keep], probe=scene["probe"],
                      positions_px=scene["positions"][keep], object_shape=scene["obj"].shape,
                      energy_eV=8000.0, detector_distance_m=2.0, detector_pixel_size_m=75e-6,
                      object_pixel_size_m=physics.object_pixel_size_m(8000.0, 2.0, 75e-6, N))


def _true_patches(scene: dict):
    """A perfect network: the true object's patches at the positions it is given."""
    obj = torch.from_numpy(scene["obj"])
    return lambda d: physics.extract_patches(obj, torch.from_numpy(d.positions_px), N)


def test_assess_a_perfect_reconstruction(scene, tmp_path):
    """The true patches, stitched: R ~ 0 on noise-free counts, the halves agree at every
    frequency (FRC 1, never below either threshold), and the figure is drawn."""
    cfg = InferenceConfig(calibration_iterations=0)
    data = _scene_data(scene)
    q = quality.assess(scene["obj"], data, _true_patches(scene), cfg, tmp_path / "q.png")
    assert q["data_consistency"]["r_factor"] < 1e-5
    h = q["half_data_frc"]
    assert h["halves"] == [32, 32] and min(h["frc"][1:]) > 0.999
    assert h["frc_1_7_cycles_per_px"] == h["frc_half_bit_cycles_per_px"] == 0.5
    assert h["resolution_half_bit_px"] == 2.0  # the Nyquist period
    assert (tmp_path / "q.png").read_bytes()[:4] == b"\x89PNG"
    assert quality.key_numbers(q)["half_frc_half_bit_cycles_per_px"] == 0.5


def test_assess_says_why_a_tiny_scan_has_no_half_data_frc(scene, tmp_path):
    data = _scene_data(scene, slice(0, 3))  # three positions along one row
    q = quality.assess(scene["obj"], data, _true_patches(scene), InferenceConfig(),
                       tmp_path / "q.png")
    assert "smaller than 8 px" in q["half_data_frc"]["skipped"]
    assert len(q["data_consistency"]["per_position"]) == 3 and (tmp_path / "q.png").is_file()


def test_assess_without_the_half_data_frc_predicts_nothing(scene, tmp_path):
    """``inference.half_data_frc: false``: the R-factor only; the halves are never predicted."""
    calls: list[int] = []

    def predict(d):
        calls.append(len(d.counts))
        return _true_patches(scene)(d)
    data = _scene_data(scene)
    q = quality.assess(scene["obj"], data, predict, InferenceConfig(half_data_frc=False),
                       tmp_path / "q.png")
    assert calls == [] and "inference.half_data_frc is false" in q["half_data_frc"]["skipped"]
    assert q["data_consistency"]["r_factor"] < 1e-5 and (tmp_path / "q.png").is_file()
    assert quality.key_numbers(q)["half_data_frc"] == q["half_data_frc"]["skipped"]


# ----------------------------------------------------------------- acceptance: ranking models

@pytest.mark.slow
def test_quality_without_ground_truth_ranks_models_like_the_ground_truth_ssim(tmp_path):
    """An under-trained (1 epoch) and a trained (25 epochs) PINN on the tiny experiment's test
    scan (trained on that scan, as with measured data): the trained one has the higher
    amplitude and phase SSIM against the ground truth, and, without using it, the lower
    R-factor and the finer half-data FRC resolution (1/7 and 1/2-bit). Without the
    calibration: one fitted factor per patch makes a coarse object of its own (on this tiny
    scan it lifts the 1-epoch network's amplitude SSIM from 0.18 to 0.77, above the
    25-epoch one's 0.69), so with it the ranking would be the calibration's, not the
    networks'."""
    settings = {"training.learning_rate": 3e-3, "training.max_minutes": 0.0,
                "inference.calibration_iterations": 0}
    d = resolve_config(REPO / TINY, settings).data
    data = simulate.simulate_dataset(d, d.object.test_size_px, (7, 1))
    region, cpu = scanned_region(data.positions_px), torch.device("cpu")
    found = {}
    for epochs in (1, 25):
        cfg = resolve_config(REPO / TINY, {**settings, "training.epochs": epochs})
        model = train_model(cfg, data, cpu)[0].eval()

        def predict(d, model=model, cfg=cfg):
            return predict_patches(model, d, cfg, cpu)
        obj = stitch(predict(data), data.positions_px, data.object_shape, data.probe,
                     cfg.inference, data.counts)[0]
        truth = score(obj[region], data.ground_truth[region])
        q = quality.assess(obj, data, predict, cfg.inference, tmp_path / f"{epochs}.png")
        found[epochs] = {"amplitude_ssim": truth["amplitude"]["ssim"],
                         "phase_ssim": truth["phase"]["ssim"],
                         "r_factor": q["data_consistency"]["r_factor"],
                         **{k: q["half_data_frc"][f"frc_{k}_cycles_per_px"]
                            for k in ("1_7", "half_bit")}}
    under, trained = found[1], found[25]
    assert trained["amplitude_ssim"] > under["amplitude_ssim"], found
    assert trained["phase_ssim"] > under["phase_ssim"], found
    assert trained["r_factor"] < under["r_factor"], found
    assert trained["1_7"] > under["1_7"] and trained["half_bit"] > under["half_bit"], found


# ----------------------------------------------------------------- one R-factor for every method

def _callee(func) -> str | None:
    """``f`` of a call ``f(...)`` or ``quality.f(...)`` (the module under any alias the
    steps give it); None for other calls (methods: the model's own ``predicted_counts`` is
    its training loss, not the R-factor)."""
    import ast
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) \
            and func.value.id in ("quality", "no_truth"):
        return func.attr
    return None


def _calls(tree) -> dict[str, set[str]]:
    """Function name -> names it calls (:func:`_callee`), for a module's top-level
    functions (nested functions count as their enclosing one's)."""
    import ast
    return {fn.name: {_callee(c.func) for c in ast.walk(fn) if isinstance(c, ast.Call)}
            for fn in tree.body if isinstance(fn, ast.FunctionDef)}


def test_every_method_gets_its_r_factor_from_the_one_function():
    """Only ``quality.data_consistency`` computes predicted counts and the R-factor; only
    ``assess_reconstruction`` calls it; the infer step (PINN and supervised baseline, the
    rule baseline_infer runs ptycho_torch.infer) reaches it through ``quality.assess``, the
    iterative step (iterative and hybrid, --step hybrid) through ``assess_without_truth``."""
    import ast
    callers: dict[str, list[str]] = {}
    for path in sorted((REPO / "ptycho_torch").glob("*.py")):
        for fn, called in _calls(ast.parse(path.read_text())).items():
            for name in ("r_factor", "predicted_counts", "data_consistency",
                         "assess_reconstruction", "assess"):
                if name in called:
                    callers.setdefault(name, []).append(f"{path.stem}.{fn}")
    assert callers["r_factor"] == callers["predicted_counts"] == ["quality.data_consistency"]
    assert callers["data_consistency"] == ["quality.assess_reconstruction"]
    assert sorted(callers["assess_reconstruction"]) == ["iterative.assess_without_truth",
                                                        "quality.assess"]
    assert callers["assess"] == ["infer.main"]
    assert "assess_without_truth" in _calls(ast.parse(
        (REPO / "ptycho_torch/iterative.py").read_text()))["run"]
    rules = (REPO / "workflow/rules/compare.smk").read_text()
    baseline = rules.partition("rule baseline_infer:")[2].partition("\nrule ")[0]
    assert "-m ptycho_torch.infer " in baseline


def test_the_iterative_and_the_infer_entries_call_it_with_their_own_probe_and_positions(
        scene, tmp_path, monkeypatch):
    """Spying on ``quality.data_consistency``: the infer step's entry passes the data's
    (trained) probe and positions; the iterative step's the solver's final ones."""
    from ptycho_torch import iterative, ptychi_solver
    seen: list[tuple] = []
    real = quality.data_consistency

    def spy(obj, data, probe=None, positions=None):
        seen.append((probe, positions))
        return real(obj, data, probe, positions)
    monkeypatch.setattr(quality, "data_consistency", spy)
    data = _scene_data(scene)
    quality.assess(scene["obj"], data, _true_patches(scene), InferenceConfig(half_data_frc=False),
                   tmp_path / "a.png")
    assert seen == [(None, None)]
    moved = data.positions_px + 0.25
    solved = ptychi_solver.Solved(scene["obj"].astype(np.complex64), 1.1 * data.probe, True, moved, [],
                              1.0, 0.0)
    cfg = resolve_config({"iterative": {"half_data_frc": False}})
    q = iterative.assess_without_truth(solved, data, cfg, False, False, tmp_path / "b.png")
    assert seen[1][0] is solved.probe and seen[1][1] is moved
    assert q["data_consistency"]["r_factor"] > 0.05  # the wrong probe scale shows
    assert "iterative.half_data_frc is false" in q["half_data_frc"]["skipped"]
