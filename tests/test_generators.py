"""The generator seam: the registry (ptycho_torch/generators.py), every generator behind it (cnn,
unet, fno: shapes, gradients, determinism, checkpoints, the size of their activations, one
epoch through the pipeline), a generator registered by a test and trained through the
pipeline, and checkpoints that keep to theirs."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from types import MappingProxyType

import pytest
import torch
from torch import nn

from conftest import REPO, TINY
from ptycho_torch import generators
from ptycho_torch.config import ModelConfig
from ptycho_torch.config_factory import ConfigError, resolve_config
from ptycho_torch.generator_cnn import CNN
from ptycho_torch.model import PtychoPINN, load_model, save_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py
RUN = "reports/2026-01-01T000000Z/tiny"
NAMES = list(generators.GENERATORS)  # every registered generator
# (pad_object, probe_big): the whole patch, the centre only, the centre and a border path
REGIONS = [(False, False), (True, False), (True, True)]


class ToyGenerator(nn.Module):
    """One 3 x 3 convolution: amplitudes ``[B, C, N, N]`` -> 2C maps, a sigmoid amplitude and
    a ``pi * tanh`` phase (rad) -> complex64 patches ``[B, C, N, N]``."""

    def __init__(self, cfg: ModelConfig, N: int):
        super().__init__()
        channels = cfg.gridsize ** 2
        self.conv = nn.Conv2d(channels, 2 * channels, 3, padding=1)

    @staticmethod
    def activation_bytes(cfg: ModelConfig, N: int) -> int:
        return 2 * cfg.gridsize ** 2 * N * N * 4

    def forward(self, amplitudes: torch.Tensor) -> torch.Tensor:
        amplitude, phase = self.conv(amplitudes).float().chunk(2, dim=1)
        return torch.polar(torch.sigmoid(amplitude), math.pi * torch.tanh(phase))


@pytest.fixture
def toy(monkeypatch):
    """``model.generator: toy`` registered for one test, as a new generator's line would."""
    monkeypatch.setattr(generators, "GENERATORS", MappingProxyType(
        {**generators.GENERATORS, "toy": "test_generators:ToyGenerator"}))


def test_the_registry_imports_no_torch_and_its_cnn_maps_groups_to_patches():
    """The config layer imports the registry at Snakemake parse time: no torch, no network.
    Its ``cnn`` maps ``[B, C, N, N]`` to complex64 ``[B, C, N, N]`` and sizes inference by
    its first block's output."""
    code = ("import sys\nimport ptycho_torch.config_factory, ptycho_torch.generators\n"
            "assert not {'torch', 'ptycho_torch.generator_cnn'} & set(sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    cfg = resolve_config(REPO / TINY)
    assert generators.generator_class("cnn") is CNN
    generator = generators.build_generator(cfg.model, 16)
    assert isinstance(generator, CNN)
    patches = generator(torch.rand(3, cfg.model.gridsize ** 2, 16, 16))
    assert patches.shape == (3, 4, 16, 16) and patches.dtype == torch.complex64
    assert CNN.activation_bytes(cfg.model, 16) == 16 * cfg.model.n_filters_scale * 16 * 16 * 4
    model = PtychoPINN(cfg.model, 16)
    assert model.generator.support.shape == (16, 16)
    assert all(k.startswith("generator.") for k in model.state_dict())


def test_an_unknown_generator_is_refused_listing_the_known_names(toy):
    with pytest.raises(ConfigError) as err:
        resolve_config(REPO / TINY, {"model.generator": "mine"})
    (problem,) = err.value.problems
    assert problem.startswith("model.generator: 'mine' is not a registered generator")
    assert "known: cnn, unet, fno, toy" in problem


def _tiny(name: str, **model: object):
    """The tiny experiment's config with ``model.generator: name`` and ``model.<key>`` set."""
    return resolve_config(REPO / TINY, {"model.generator": name,
                                        **{f"model.{k}": v for k, v in model.items()}})


@pytest.mark.parametrize("pad,big", REGIONS, ids=["whole", "centre", "centre+border"])
@pytest.mark.parametrize("name", NAMES)
def test_each_generator_maps_groups_to_patches_and_every_parameter_learns(name, pad, big):
    """``[B, C, N, N]`` amplitudes -> complex64 ``[B, C, N, N]``, amplitude within the sigmoid's
    (0, 1), phase within (-pi, pi); 0 outside the centre with ``pad_object`` alone, where
    ``support`` is 0 too; a loss on the patches reaches every parameter."""
    cfg = _tiny(name, pad_object=pad, probe_big=big)
    torch.manual_seed(0)
    generator = generators.build_generator(cfg.model, 16)
    patches = generator(torch.rand(3, 4, 16, 16))
    assert patches.shape == (3, 4, 16, 16) and patches.dtype == torch.complex64
    assert patches.abs().max() < 1 and patches.angle().abs().max() <= math.pi
    assert generator.support.shape == (16, 16)
    outside = generator.support == 0
    assert bool(outside.any()) == (pad and not big)
    assert not patches[..., outside].abs().any()
    target = torch.polar(torch.rand(3, 4, 16, 16), torch.rand(3, 4, 16, 16))
    (patches - target).abs().square().mean().backward()
    idle = [n for n, p in generator.named_parameters() if p.grad is None or not p.grad.any()]
    assert not idle, idle


@pytest.mark.parametrize("name", NAMES)
def test_each_generator_is_deterministic_and_survives_its_checkpoint(name, tmp_path):
    """Same seed: the same weights and the same patches (CPU); ``save_checkpoint`` then
    ``load_model``: the same patches again."""
    cfg = _tiny(name)
    amplitudes, offsets = torch.rand(2, 4, 16, 16), torch.randn(2, 4, 2)
    built = []
    for _ in range(2):
        torch.manual_seed(cfg.seed)
        built.append(PtychoPINN(cfg.model, cfg.data.N).eval())
    one, two = (m.state_dict() for m in built)
    assert list(one) == list(two) and all(torch.equal(one[k], two[k]) for k in one)
    with torch.no_grad():
        first = built[0](amplitudes, offsets)
        assert torch.equal(first, built[1](amplitudes, offsets))
        save_checkpoint(tmp_path / "model.pt", built[0], cfg, {})
        assert torch.equal(first, load_model(tmp_path / "model.pt", cfg)(amplitudes, offsets))


@pytest.mark.parametrize("pad,big", REGIONS, ids=["whole", "centre", "centre+border"])
@pytest.mark.parametrize("name", NAMES)
def test_each_generators_activation_bytes_bound_its_activations(name, pad, big):
    """``activation_bytes(cfg, N)`` (what inference sizes its batches by) is at least every
    module's input and output per group, in float32 bytes."""
    cfg = _tiny(name, pad_object=pad, probe_big=big)
    generator = generators.build_generator(cfg.model, 16)
    largest = [0]

    def record(module, inputs, output):
        for t in (*inputs, output):
            if isinstance(t, torch.Tensor) and t.dim() == 4:
                largest[0] = max(largest[0], t[0].numel() * 4)

    hooks = [m.register_forward_hook(record) for m in generator.modules()]
    with torch.no_grad():
        generator(torch.rand(2, 4, 16, 16))
    for hook in hooks:
        hook.remove()
    assert 0 < largest[0] <= type(generator).activation_bytes(cfg.model, 16)


def test_fno_modes_must_fit_the_patch_only_for_the_fno():
    """``model.fno_modes`` above ``data.N / 2`` is refused with the fno, ignored otherwise."""
    with pytest.raises(ConfigError) as err:
        _tiny("fno", fno_modes=9)
    (problem,) = err.value.problems
    assert problem.startswith("model.fno_modes: 9 is above data.N / 2 = 8")
    assert _tiny("cnn", fno_modes=9).model.fno_modes == 9
    assert _tiny("fno", fno_modes=8).model.fno_modes == 8


@pytest.fixture(scope="module")
def simulated(tmp_path_factory) -> Path:
    """The tiny experiment's simulated scans (``train.cxi``, ``test.cxi``) and their evidence,
    made once for the module's pipeline runs."""
    from ptycho_torch import simulate
    where = tmp_path_factory.mktemp("simulated")
    tiny = str(REPO / TINY)
    assert simulate.main(["--config", tiny, "--train-out", str(where / "train.cxi"),
                          "--test-out", str(where / "test.cxi"),
                          "--report-dir", str(where / RUN / "simulate")]) == 0
    return where


def train_and_infer(name: str, simulated: Path, here: Path) -> None:
    """Validate, train one epoch and infer with ``model.generator: name`` in ``here`` (the
    working directory), on a copy of the ``simulated`` scans."""
    from ptycho_torch import infer, train, validate
    shutil.copytree(simulated, here, dirs_exist_ok=True)
    tiny = str(REPO / TINY)
    assert validate.main(["--config", tiny, "--set", f"model.generator={name}", "--set",
                          "training.epochs=1", "--set", "training.max_minutes=0.0",
                          "--train-data", "train.cxi", "--test-data", "test.cxi",
                          "--out", "validate/payload.json",
                          "--report-dir", f"{RUN}/validate"]) == 0
    assert train.main(["--payload", "validate/payload.json", "--data", "train.cxi",
                       "--out-dir", "train", "--report-dir", f"{RUN}/train"]) == 0
    assert infer.main(["--model", "train/model.pt", "--data", "test.cxi", "--out-dir", "infer",
                       "--report-dir", f"{RUN}/infer"]) == 0


@pytest.mark.parametrize("name", NAMES)
def test_each_generator_trains_and_reconstructs_through_the_steps(name, simulated, tmp_path,
                                                                  monkeypatch):
    """One epoch of each registered generator on the tiny experiment, then inference: the
    checkpoint names the generator, the reconstruction is scored against the ground truth
    with finite PSNR."""
    monkeypatch.chdir(tmp_path)
    train_and_infer(name, simulated, tmp_path)
    ckpt = torch.load(tmp_path / "train/model.pt", weights_only=True)
    assert ckpt["config"]["model"]["generator"] == name and ckpt["meta"]["epochs_run"] == 1
    metrics = json.loads((tmp_path / "infer/metrics.json").read_text())
    assert metrics["ground_truth"] is True
    assert all(math.isfinite(metrics[part]["psnr"]) for part in ("amplitude", "phase"))


def test_a_registered_generator_trains_and_infers_through_the_steps(toy, simulated, tmp_path,
                                                                    monkeypatch):
    """A generator from outside the package, registered by one line, runs the tiny pipeline
    in-process: validate, one epoch of training, inference; its weights moved, the
    checkpoint names it."""
    from ptycho_torch import infer
    monkeypatch.chdir(tmp_path)
    train_and_infer("toy", simulated, tmp_path)
    for product in ["train/" + n for n in ("model.pt", "history.csv", "loss.png")] + \
            ["infer/" + n for n in infer.PRODUCTS]:
        assert (tmp_path / product).is_file(), product
    ckpt = torch.load(tmp_path / "train/model.pt", weights_only=True)
    assert ckpt["config"]["model"]["generator"] == "toy" and ckpt["meta"]["epochs_run"] == 1
    cfg = resolve_config(ckpt["config"])
    torch.manual_seed(cfg.seed)  # as the train step starts
    start = PtychoPINN(cfg.model, cfg.data.N).state_dict()
    assert list(start) == list(ckpt["state_dict"]) == ["generator.conv.weight",
                                                      "generator.conv.bias"]
    assert not any(torch.equal(start[k], v) for k, v in ckpt["state_dict"].items())
    metrics = json.loads((tmp_path / "infer/metrics.json").read_text())
    assert metrics["ground_truth"] is True


def test_a_checkpoint_refuses_another_generator(toy, tmp_path: Path):
    """A ``cnn`` checkpoint into a ``toy`` network, and back: a ConfigError naming both; the
    fine-tuning check of validate names the setting."""
    from ptycho_torch.validate import init_model_problems
    cnn = resolve_config(REPO / TINY)
    toy_cfg = resolve_config(REPO / TINY, {"model.generator": "toy"})
    save_checkpoint(tmp_path / "cnn.pt", PtychoPINN(cnn.model, cnn.data.N), cnn, {})
    save_checkpoint(tmp_path / "toy.pt", PtychoPINN(toy_cfg.model, toy_cfg.data.N), toy_cfg, {})
    assert isinstance(load_model(tmp_path / "toy.pt", toy_cfg).generator, ToyGenerator)
    for path, cfg, held, wanted in ((tmp_path / "cnn.pt", toy_cfg, "cnn", "toy"),
                                    (tmp_path / "toy.pt", cnn, "toy", "cnn")):
        with pytest.raises(ConfigError) as err:
            load_model(path, cfg)
        (problem,) = err.value.problems
        assert problem.startswith(f"model.generator: {path} holds a {held!r} generator, but "
                                  f"{wanted!r} is configured"), problem
    tune = resolve_config(REPO / TINY, {"model.generator": "toy",
                                        "training.init_model": str(tmp_path / "cnn.pt")})
    (problem,) = init_model_problems(tune)
    assert problem.startswith("model.generator: 'toy' here, but training.init_model")
