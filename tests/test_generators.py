"""The generator seam: the registry (ptycho_torch/generators.py), the CNN behind it, a generator
registered by a test and trained through the pipeline, and checkpoints that keep to theirs."""

from __future__ import annotations

import json
import math
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
        resolve_config(REPO / TINY, {"model.generator": "unet"})
    (problem,) = err.value.problems
    assert problem.startswith("model.generator: 'unet' is not a registered generator")
    assert "known: cnn, toy" in problem


def test_a_registered_generator_trains_and_infers_through_the_steps(toy, tmp_path, monkeypatch):
    """A generator from outside the package, registered by one line, runs the tiny pipeline
    in-process: validate, one epoch of training, inference; its weights moved, the
    checkpoint names it."""
    from ptycho_torch import infer, simulate, train, validate
    monkeypatch.chdir(tmp_path)
    tiny = str(REPO / TINY)
    assert simulate.main(["--config", tiny, "--train-out", "train.cxi", "--test-out",
                          "test.cxi", "--report-dir", f"{RUN}/simulate"]) == 0
    assert validate.main(["--config", tiny, "--set", "model.generator=toy", "--set",
                          "training.epochs=1", "--set", "training.max_minutes=0.0",
                          "--train-data", "train.cxi", "--test-data", "test.cxi",
                          "--out", "validate/payload.json",
                          "--report-dir", f"{RUN}/validate"]) == 0
    assert train.main(["--payload", "validate/payload.json", "--data", "train.cxi",
                       "--out-dir", "train", "--report-dir", f"{RUN}/train"]) == 0
    assert infer.main(["--model", "train/model.pt", "--data", "test.cxi", "--out-dir", "infer",
                       "--report-dir", f"{RUN}/infer"]) == 0
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
