"""Config factory: every bad input is named by its key path; precedence; payload round trip.

Run with ``CUDA_VISIBLE_DEVICES="" pytest tests/test_config_factory.py -vv``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ptycho_torch.config import ExecutionConfig, ExperimentConfig
from ptycho_torch.config_factory import (ConfigError, config_hash, create_inference_payload,
                                         create_training_payload, parse_set_option,
                                         payload_from_json, payload_to_json, resolve_config)
from ptycho_torch.cxi import write_cxi
from ptycho_torch.dataset import PtychoData

REPO = Path(__file__).resolve().parents[1]
COUNTS = "/entry_1/instrument_1/detector_1/data"

# A config that fits the small synthetic data files below (N = 8, 6 patterns).
SMALL = {"data": {"N": 8, "probe": {"pupil_radius_px": 2.0}}, "training": {"batch_size": 2}}


def _data(path: Path, N: int = 8, n: int = 6, counts: np.ndarray | None = None) -> Path:
    rng = np.random.default_rng(0)
    write_cxi(path, PtychoData(
        counts=rng.poisson(20.0, (n, N, N)).astype(np.float32) if counts is None else counts,
        probe=np.ones((N, N), np.complex64), positions_px=np.full((n, 2), N / 2 + 2.0),
        object_shape=(N + 8, N + 8), energy_eV=8000.0, detector_distance_m=2.0,
        detector_pixel_size_m=75e-6, object_pixel_size_m=1e-7))
    return path


def _problems(exc: pytest.ExceptionInfo) -> list[str]:
    return exc.value.problems


# ----------------------------------------------------------------- bad configs

# (id, experiment mapping, overrides, key path the single problem must start with, words in it)
BAD_CONFIGS = [
    ("int as string", {"data": {"N": "32"}}, None, "data.N", "expected an integer"),
    ("float for int", {"training": {"epochs": 3.5}}, None, "training.epochs", "expected an integer"),
    ("bool for int", {"execution": {"threads": True}}, None, "execution.threads", "integer"),
    ("string for bool", {"inference": {"phase_sync": "yes"}}, None, "inference.phase_sync",
     "true or false"),
    ("int for bool", {"model": {"pad_object": 1}}, None, "model.pad_object", "true or false"),
    ("string for float", {"data": {"energy_eV": "8 keV"}}, None, "data.energy_eV", "a number"),
    ("numeric string", {"training": {"learning_rate": "1e-3"}}, None, "training.learning_rate",
     "write 1.0e-3"),
    ("null value", {"data": {"N": None}}, None, "data.N", "expected an integer"),
    ("list for section", {"training": [1, 2]}, None, "training", "expected a mapping"),
    ("string for section", {"data": {"object": "grf"}}, None, "data.object", "expected a mapping"),
    ("N zero", {"data": {"N": 0}}, None, "data.N", "out of range"),
    ("N not power of two", {"data": {"N": 48}}, None, "data.N", "power of two"),
    ("negative learning rate", None, {"training.learning_rate": -1e-3}, "training.learning_rate",
     "out of range"),
    ("batch size zero", {"training": {"batch_size": 0}}, None, "training.batch_size",
     "out of range"),
    ("negative seed", {"seed": -1}, None, "seed", "out of range"),
    ("filters too wide", {"model": {"n_filters_scale": 9}}, None, "model.n_filters_scale",
     "out of range"),
    ("amplitude above one", {"data": {"object": {"amplitude_max": 1.5}}}, None,
     "data.object.amplitude_max", "out of range"),
    ("amplitude min > max", {"data": {"object": {"amplitude_min": 0.9, "amplitude_max": 0.5}}},
     None, "data.object.amplitude_min", "above data.object.amplitude_max"),
    ("pupil radius >= N/2", {"data": {"probe": {"pupil_radius_px": 16.0}}}, None,
     "data.probe.pupil_radius_px", "below N/2"),
    ("object smaller than N+4", {"data": {"N": 64, "probe": {"pupil_radius_px": 6.0},
                                          "object": {"test_size_px": 60}}}, None,
     "data.object.test_size_px", "N + 4"),
    ("too few neighbours for the group", {"model": {"gridsize": 3}}, None, "model.n_neighbours",
     "gridsize^2 = 9"),
    ("misspelt leaf", {"training": {"learning_rat": 1e-3}}, None, "training.learning_rat",
     "did you mean 'learning_rate'"),
    ("misspelt data key", None, {"data.nphoton": 1e5}, "data.nphoton", "did you mean 'nphotons'"),
    ("misspelt section", {"trainng": {"epochs": 3}}, None, "trainng", "did you mean 'training'"),
    ("misspelt nested section", {"data": {"objekt": {"kind": "grf"}}}, None, "data.objekt",
     "did you mean 'object'"),
    ("unknown key, no match", {"model": {"zzz": 1}}, None, "model.zzz", "allowed: generator, n_filters_scale"),
    ("bad loss choice", {"training": {"loss": "l2"}}, None, "training.loss", "poisson, mae"),
    ("bad device choice", None, {"execution.device": "tpu"}, "execution.device", "auto, cpu, cuda"),
    ("bad object kind", {"data": {"object": {"kind": "squares"}}}, None, "data.object.kind",
     "grf, lines"),
    ("NaN", {"training": {"learning_rate": float("nan")}}, None, "training.learning_rate",
     "finite"),
    ("infinity", {"data": {"nphotons": float("inf")}}, None, "data.nphotons", "finite"),
    ("experiment name escapes", {"experiment": "../outside"}, None, "experiment",
     "letters, digits"),
    ("empty experiment name", {"experiment": ""}, None, "experiment", "letters, digits"),
    ("non-ASCII experiment name", {"experiment": "caf\u00e9"}, None, "experiment", "ASCII"),
    ("huge integer for float", {"data": {"nphotons": 10 ** 400}}, None, "data.nphotons", "finite"),
    ("zero epochs without an initial model", {"training": {"epochs": 0}}, None,
     "training.epochs", "training.init_model is not set"),
    ("override below a leaf", {"data": {"N": 32}}, {"data.N.x": 1}, "data.N.x", "non-mapping"),
    ("override creates a section under a leaf", None, {"data.N.x": 1}, "data.N",
     "expected an integer"),
]


@pytest.mark.parametrize("experiment,overrides,key,words",
                         [c[1:] for c in BAD_CONFIGS], ids=[c[0] for c in BAD_CONFIGS])
def test_bad_config_is_named_by_key_path(experiment, overrides, key, words):
    with pytest.raises(ConfigError) as err:
        resolve_config(experiment, overrides)
    problems = _problems(err)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{key}: "), problems[0]
    assert words in problems[0]
    assert str(err.value) == problems[0]


def test_zero_epochs_from_an_initial_model_is_accepted():
    """Fine-tuning for 0 epochs: the given model as it is (its file is checked by validate)."""
    cfg = resolve_config({"training": {"epochs": 0, "init_model": "source.pt"}})
    assert cfg.training.epochs == 0 and cfg.training.init_model == "source.pt"


BAD_YAML = [
    ("top level list", "- a\n- b\n", "config", "mapping of keys"),
    ("invalid yaml", "data: {N: [\n", "", "not valid YAML"),
    ("section list", "training:\n  - epochs\n", "training", "expected a mapping"),
    ("tab typo", "training:\n  loss: l2\n", "training.loss", "not one of"),
]


@pytest.mark.parametrize("text,key,words", [c[1:] for c in BAD_YAML], ids=[c[0] for c in BAD_YAML])
def test_bad_yaml_file(tmp_path, text, key, words):
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        resolve_config(path)
    (problem,) = _problems(err)
    assert problem.startswith(f"{key}: " if key else f"{path}: ") and words in problem


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        resolve_config(tmp_path / "none.yaml")


def test_all_problems_are_reported_at_once():
    exp = {"data": {"N": 48, "nphotons": -1.0, "objekt": {},
                    "object": {"amplitude_min": 0.9, "amplitude_max": 0.5}},
           "training": {"loss": "l2", "learning_rat": 1.0}, "trainng": {}}
    with pytest.raises(ConfigError) as err:
        resolve_config(exp, {"execution.device": "tpu", "seed": "seven"})
    keys = sorted(p.split(":")[0] for p in _problems(err))
    assert keys == sorted(["data.N", "data.nphotons", "data.objekt", "data.object.amplitude_min",
                           "training.loss", "training.learning_rat", "trainng",
                           "execution.device", "seed"])


def test_cross_checks_skip_keys_that_are_already_wrong():
    # N = 48 is invalid: the pupil check must not be judged against the default N = 32
    with pytest.raises(ConfigError) as err:
        resolve_config({"data": {"N": 48, "probe": {"pupil_radius_px": 20.0}}})
    assert [p.split(":")[0] for p in _problems(err)] == ["data.N"]
    # a broken section: its keys keep their defaults, which are not judged against data.N = 8
    with pytest.raises(ConfigError) as err:
        resolve_config({"data": {"N": 8, "probe": "big"}})
    assert [p.split(":")[0] for p in _problems(err)] == ["data.probe"]


# ----------------------------------------------------------------- measured data: no simulation

MEASURED = {"data": {"source": "file", "train_file": "scan.cxi"}}
SIMULATION_EDITS = {  # key -> (a value N = 128 would refuse in a simulation, a valid other one)
    "data.nphotons": (10.0, 10.0), "data.object.test_size_px": (20, 40),
    "data.object.kind": ("image", "lines"), "data.probe.pupil_radius_px": (100.0, 2.0),
    "data.probe.kind": ("file", "gaussian"), "data.scan.step_px": (9.0, 9.0),
    "data.detector.beamstop_radius_px": (300.0, 2.0)}


def _deep_merge(base: dict, overlay: dict) -> dict:
    """``overlay`` on ``base``, section by section (as Snakemake merges --configfile files)."""
    out = dict(base)
    for key, value in overlay.items():
        merged = isinstance(value, dict) and isinstance(base.get(key), dict)
        out[key] = _deep_merge(base[key], value) if merged else value
    return out


@pytest.mark.parametrize("N", [32, 64, 128, 256])
def test_measured_data_at_any_N_is_not_judged_by_the_simulation_settings(N):
    """config/examples/my_cxi.yaml over config/config.yaml validates at any N: the simulated
    object's size (test_size_px = 128 by default) no longer has to exceed N."""
    tree = _deep_merge(yaml.safe_load((REPO / "config/config.yaml").read_text()),
                       yaml.safe_load((REPO / "config/examples/my_cxi.yaml").read_text()))
    tree.pop("run_id", None)
    tree = {k: v for k, v in tree.items() if k in {f.name for f in fields(ExperimentConfig)}}
    assert resolve_config(tree, {"data.N": N}).data.N == N
    edits = {key: values[0] for key, values in SIMULATION_EDITS.items()}
    assert resolve_config(MEASURED, {"data.N": N, **edits}).data.N == N


def test_simulated_data_still_need_an_object_larger_than_N():
    with pytest.raises(ConfigError) as err:
        resolve_config(None, {"data.N": 128})
    assert _problems(err) == ["data.object.test_size_px: 128 px is too small for patches of "
                              "data.N = 128 px (need at least N + 4)"]


def test_measured_data_still_type_check_the_simulation_settings():
    with pytest.raises(ConfigError) as err:
        resolve_config(MEASURED, {"data.object.test_size_px": "big", "data.scan.step_px": -1.0})
    assert sorted(p.split(":")[0] for p in _problems(err)) == ["data.object.test_size_px",
                                                                "data.scan.step_px"]


@pytest.mark.parametrize("key", sorted(SIMULATION_EDITS))
def test_simulation_settings_change_the_hash_only_when_simulating(key):
    measured = {"data": {**MEASURED["data"], "N": 128}}
    refused_in_simulation, valid = SIMULATION_EDITS[key]
    assert config_hash(resolve_config(measured, {key: refused_in_simulation})) == \
        config_hash(resolve_config(measured))
    assert config_hash(resolve_config(None, {key: valid})) != config_hash(ExperimentConfig())


# ----------------------------------------------------------------- precedence

def test_precedence_default_yaml_override(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("experiment: mine\n"
                    "data:\n  N: 64\n  nphotons: 1e5\n  object: {kind: lines, train_size_px: 300}\n"
                    "training:\n  epochs: 5\n  learning_rate: 1e-4\n"
                    "model: {amp_activation: softplus}\n")
    cfg = resolve_config(path, {"training.epochs": 3, "data.object.kind": "grf",
                                "execution.threads": 1})
    assert cfg.training.epochs == 3                      # override beats YAML
    assert cfg.data.object.kind == "grf"                 # override beats YAML (nested)
    assert cfg.execution.threads == 1                    # override beats default
    assert cfg.data.N == 64                              # YAML beats default
    assert cfg.data.object.train_size_px == 300          # YAML, sibling of an overridden key
    assert cfg.model.amp_activation == "softplus"
    assert cfg.training.learning_rate == 1e-4            # 1e-4 is a number, not text
    assert isinstance(cfg.data.nphotons, float) and cfg.data.nphotons == 1e5
    d = ExperimentConfig()
    assert cfg.training.batch_size == d.training.batch_size == 16   # default
    assert cfg.data.object.test_size_px == d.data.object.test_size_px == 128
    assert cfg.seed == 7 and cfg.experiment == "mine"


def test_defaults_resolve_to_the_dataclass_defaults():
    assert resolve_config() == ExperimentConfig()
    assert resolve_config({"run_id": "2026-01-01T000000Z"}) == ExperimentConfig()


def test_int_given_for_float_is_stored_as_float():
    cfg = resolve_config({"data": {"nphotons": 1000}})
    assert isinstance(cfg.data.nphotons, float) and cfg.data.nphotons == 1000.0


# ----------------------------------------------------------------- --set

@pytest.mark.parametrize("text,key,value", [
    ("training.epochs=3", "training.epochs", 3),
    ("training.learning_rate=1e-3", "training.learning_rate", 1e-3),
    ("data.nphotons=1.0e6", "data.nphotons", 1e6),
    ("data.nphotons=2.5E+4", "data.nphotons", 2.5e4),
    ("inference.phase_sync=false", "inference.phase_sync", False),
    ("model.pad_object=true", "model.pad_object", True),
    ("training.loss=mae", "training.loss", "mae"),
    (" experiment = run_a ", "experiment", "run_a"),
    ("experiment='123'", "experiment", "123"),
    ("experiment=a=b", "experiment", "a=b"),
    ("data.object={kind: lines}", "data.object", {"kind": "lines"}),
])
def test_parse_set_option(text, key, value):
    k, v = parse_set_option(text)
    assert k == key and v == value and type(v) is type(value)


@pytest.mark.parametrize("text", ["training.epochs", "data.N=[1,"])
def test_parse_set_option_rejects(text):
    with pytest.raises(ConfigError):
        parse_set_option(text)


def test_set_values_flow_into_config():
    cfg = resolve_config(None, dict(parse_set_option(s) for s in
                                    ["training.learning_rate=3e-4", "inference.stitch=uniform"]))
    assert cfg.training.learning_rate == 3e-4 and cfg.inference.stitch == "uniform"


# ----------------------------------------------------------------- data cross-checks

@pytest.fixture
def work(tmp_path, monkeypatch) -> Path:
    """A working directory; outputs must stay inside it."""
    d = tmp_path / "work"
    d.mkdir()
    monkeypatch.chdir(d)
    return d


def _payload_problems(data_file, output_dir="out", experiment=SMALL, overrides=None):
    with pytest.raises(ConfigError) as err:
        create_training_payload(data_file, output_dir, overrides, experiment=experiment)
    return _problems(err)


def test_valid_training_payload(work):
    p = create_training_payload(_data(work / "t.cxi"), "out", {"training.epochs": 2},
                                experiment=SMALL)
    assert p.config.data.N == 8 and p.config.training.epochs == 2
    assert p.overrides == ("training.epochs=2",) and p.output_dir == "out"


def test_data_with_other_N(work):
    (problem,) = _payload_problems(_data(work / "t.cxi", N=16))
    assert problem.startswith("data.N: 8 does not match") and "16 px" in problem


def test_too_few_positions_for_batch(work):
    (problem,) = _payload_problems(_data(work / "t.cxi", n=6), overrides={"training.batch_size": 7})
    assert problem.startswith("training.batch_size: 7 exceeds the 6 scan positions")


def test_too_few_positions_for_grouping(work):
    path = _data(work / "t.cxi", n=5)
    (problem,) = _payload_problems(path)  # gridsize 2 draws from n_neighbours = 6 positions
    assert problem.startswith("model.n_neighbours: grouping needs at least 6 scan positions")
    create_training_payload(path, "out", {"model.gridsize": 1}, experiment=SMALL)  # no grouping


def test_missing_data_file(work):
    (problem,) = _payload_problems(work / "none.cxi")
    assert problem == f"train data: {work / 'none.cxi'}: file not found"


def test_corrupt_data_file(work):
    (work / "bad.cxi").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    (problem,) = _payload_problems(work / "bad.cxi")
    assert problem.startswith(f"train data: {work / 'bad.cxi'}: not a readable HDF5")


def test_truncated_data_file(work):
    path = _data(work / "t.cxi", n=64, N=16)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    (problem,) = _payload_problems(path, experiment={"training": {"batch_size": 2},
                                                     "data": {"N": 16, "probe": {"pupil_radius_px": 4.0}}})
    assert problem.startswith(f"train data: {path}")


@pytest.mark.parametrize("value,word", [(np.nan, "NaN"), (-3.0, "negative")])
def test_bad_counts_in_data(work, value, word):
    counts = np.ones((6, 8, 8), np.float32)
    counts[5, 0, 0] = value
    (problem,) = _payload_problems(_data(work / "t.cxi", counts=counts))
    assert problem.startswith("train data: ") and COUNTS in problem and word in problem


def test_output_dir_escaping_workdir(work):
    (problem,) = _payload_problems(_data(work / "t.cxi"), output_dir="../outside")
    assert problem.startswith("output_dir: ../outside escapes")
    # an absolute path inside the working directory is fine
    create_training_payload(work / "t.cxi", work / "out", experiment=SMALL)


def test_config_output_and_data_problems_together(work):
    problems = _payload_problems(work / "none.cxi", output_dir="../x",
                                 experiment={"training": {"loss": "l2"}})
    assert [p.split(":")[0] for p in problems] == ["training.loss", "output_dir", "train data"]


def test_data_and_output_problems_together(work):
    problems = _payload_problems(_data(work / "t.cxi", N=16), output_dir="/",
                                 overrides={"training.batch_size": 99})
    assert [p.split(":")[0] for p in problems] == ["output_dir", "data.N", "training.batch_size"]


# ----------------------------------------------------------------- checkpoints

def _cfg16(scale: int = 1) -> ExperimentConfig:
    return resolve_config({"data": {"N": 16}, "model": {"n_filters_scale": scale}})


def test_checkpoint_from_other_architecture(work):
    from ptycho_torch.model import PtychoPINN, load_model, save_checkpoint
    torch.manual_seed(0)
    cfg1 = _cfg16(1)
    save_checkpoint(work / "model.pt", PtychoPINN(cfg1.model, 16), cfg1, {"note": "test"})
    assert isinstance(load_model(work / "model.pt", cfg1), PtychoPINN)
    with pytest.raises(ConfigError) as err:
        load_model(work / "model.pt", _cfg16(2))
    (problem,) = _problems(err)
    assert problem.startswith("model: ") and "architecture" in problem


@pytest.mark.parametrize("content", [None, b"not a checkpoint", b"PK\x03\x04garbage"])
def test_unreadable_checkpoint(work, content):
    from ptycho_torch.config_factory import load_checkpoint
    if content is not None:
        (work / "model.pt").write_bytes(content)
    with pytest.raises(ConfigError) as err:
        load_checkpoint(work / "model.pt")
    assert _problems(err)[0].startswith("model: ")


def test_checkpoint_with_arbitrary_pickle_is_refused(work):
    from ptycho_torch.config_factory import load_checkpoint
    torch.save({"state_dict": {}, "config": {}, "evil": ExecutionConfig()}, work / "model.pt")
    with pytest.raises(ConfigError, match="model: "):
        load_checkpoint(work / "model.pt")


def test_inference_payload_uses_checkpoint_config(work):
    from ptycho_torch.model import PtychoPINN, save_checkpoint
    cfg = resolve_config(SMALL, {"model.n_filters_scale": 2, "training.epochs": 1})
    save_checkpoint(work / "model.pt", PtychoPINN(cfg.model, 8), cfg, {})
    p = create_inference_payload(work / "model.pt", _data(work / "test.cxi"), "out",
                                 {"inference.stitch": "uniform"})
    assert p.config.model.n_filters_scale == 2 and p.config.inference.stitch == "uniform"
    with pytest.raises(ConfigError) as err:
        create_inference_payload(work / "model.pt", _data(work / "t16.cxi", N=16), "../o")
    assert [q.split(":")[0] for q in _problems(err)] == ["output_dir", "data.N"]
    with pytest.raises(ConfigError, match="model: "):
        create_inference_payload(work / "none.pt", work / "test.cxi", "out")


# ----------------------------------------------------------------- payload JSON and hash

def test_payload_round_trip_and_hash(work):
    (work / "exp.yaml").write_text("experiment: rt\ndata:\n  N: 8\n  probe: {pupil_radius_px: 2.5}\n"
                                   "training: {batch_size: 3, learning_rate: 2e-4}\n")
    payload = create_training_payload(_data(work / "t.cxi"), "out", {"training.epochs": 4},
                                      experiment=work / "exp.yaml")
    text = payload_to_json(payload)
    back = payload_from_json(text)
    assert back == payload
    assert config_hash(back.config) == config_hash(payload.config) == json.loads(text)["config_hash"]
    assert payload_to_json(back) == text
    assert back.config.training.learning_rate == 2e-4 and back.config.training.epochs == 4


def test_hash_covers_science_not_execution():
    base = ExperimentConfig()
    h = config_hash(base)
    assert len(h) == 64 and int(h, 16) >= 0
    assert config_hash(replace(base, execution=ExecutionConfig(threads=7, device="cpu"))) == h
    assert config_hash(resolve_config(None, {"training.epochs": 41})) != h
    assert config_hash(resolve_config(None, {"data.object.phase_max_rad": 1.25})) != h
    assert config_hash(resolve_config(None, {"experiment": "other"})) != h


def _payload_dict(work: Path) -> dict:
    payload = create_training_payload(_data(work / "t.cxi"), "out", experiment=SMALL)
    return json.loads(payload_to_json(payload))


def test_tampered_payload_is_rejected(work):
    d = _payload_dict(work)
    d["config"]["training"]["epochs"] += 1
    with pytest.raises(ConfigError) as err:
        payload_from_json(json.dumps(d))
    (problem,) = _problems(err)
    assert problem.startswith("config_hash: ") and "edited" in problem


def test_payload_with_hash_removed_is_rejected(work):
    d = _payload_dict(work)
    d["config"]["training"]["epochs"] += 1
    del d["config_hash"]
    with pytest.raises(ConfigError, match="payload.config_hash: missing"):
        payload_from_json(json.dumps(d))


def test_payload_tampered_to_invalid_value_names_key(work):
    d = _payload_dict(work)
    d["config"]["data"]["N"] = 48
    with pytest.raises(ConfigError, match=r"^data\.N: 48 must be a power of two"):
        payload_from_json(json.dumps(d))


def test_payload_not_json():
    with pytest.raises(ConfigError, match="payload: not valid JSON"):
        payload_from_json("{\"config\": ")


# ----------------------------------------------------------------- execution config

@pytest.fixture
def torch_calls(monkeypatch) -> list:
    """Record setup_execution's process-global torch settings instead of applying them."""
    calls: list = []
    monkeypatch.setattr(torch, "set_num_threads", lambda n: calls.append(("threads", n)))
    monkeypatch.setattr(torch._C, "_set_deterministic_algorithms",
                        lambda flag, **kw: calls.append(("deterministic", flag)))
    return calls


def test_device_auto_resolves_to_cpu_without_visible_cuda(torch_calls):
    from ptycho_torch.execution import setup_execution
    if os.environ.get("CUDA_VISIBLE_DEVICES") == "":
        assert not torch.cuda.is_available()
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert setup_execution(ExecutionConfig(device="auto", threads=1)).type == expected
    assert torch_calls == [("threads", 1), ("deterministic", True)]
    torch_calls.clear()
    assert setup_execution(ExecutionConfig(device="cpu", threads=0, deterministic=False)).type == "cpu"
    assert torch_calls == [("deterministic", False)]  # threads 0 = leave torch's default


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda_is_a_config_error(torch_calls):
    from ptycho_torch.execution import setup_execution
    with pytest.raises(ConfigError, match="execution.device"):
        setup_execution(ExecutionConfig(device="cuda"))


# ----------------------------------------------------------------- CLIs: exit 2, nothing written

def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize("args,key", [
    (["--config-json", '{"data": {"N": 48}}'], "data.N"),
    (["--config-json", "{}", "--set", "training.loss=l2"], "training.loss"),
    (["--config-json", '{"data": {"object": {"train_size_px": 20}}}'], "data.object.train_size_px"),
    (["--config-json", '{"experiment": "../outside"}'], "experiment"),
    (["--set", "data.N"], "--set data.N"),
])
def test_simulate_cli_in_process(work, capsys, args, key):
    from ptycho_torch import simulate
    before = _tree(work)
    rc = simulate.main(args + ["--train-out", "r/train.cxi", "--test-out", "r/test.cxi",
                               "--report-dir", "rep/simulate"])
    err = capsys.readouterr().err
    assert rc == 2
    assert f"error: {key}:" in err and "Traceback" not in err
    assert _tree(work) == before


def _train_args(work: Path, payload: Path, data: Path) -> list[str]:
    return ["--payload", str(payload), "--data", str(data), "--out-dir", "res/train",
            "--report-dir", "rep/train"]


def test_train_cli_tampered_payload(work, capsys):
    from ptycho_torch import train
    d = _payload_dict(work)
    d["config"]["training"]["epochs"] = 1
    (work / "payload.json").write_text(json.dumps(d))
    before = _tree(work)
    rc = train.main(_train_args(work, work / "payload.json", work / "t.cxi"))
    assert rc == 2 and "error: config_hash:" in capsys.readouterr().err
    assert _tree(work) == before


def test_train_cli_data_mismatch(work, capsys):
    """The train step re-checks its data file against the payload's config."""
    from ptycho_torch import train
    payload = create_training_payload(_data(work / "t.cxi"), "res", experiment=SMALL)
    (work / "payload.json").write_text(payload_to_json(payload))
    _data(work / "t16.cxi", N=16)
    before = _tree(work)
    rc = train.main(_train_args(work, work / "payload.json", work / "t16.cxi")
                    + ["--set", "training.batch_size=99"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert [line.split(":")[1].strip() for line in err.splitlines()
            if line.startswith("error: ")] == ["data.N", "training.batch_size"]
    assert _tree(work) == before


def test_train_cli_missing_payload(work, capsys):
    from ptycho_torch import train
    rc = train.main(_train_args(work, work / "none.json", _data(work / "t.cxi")))
    assert rc == 2 and "payload" in capsys.readouterr().err


@pytest.fixture(scope="module", autouse=True)
def _cli_procs(tmp_path_factory):
    """Two real CLI subprocesses, started when this module starts so that their
    ~2 s import of torch overlaps the in-process tests; :func:`cli_runs` collects them."""
    root = tmp_path_factory.mktemp("cli")
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(REPO))
    cases = {}
    w = root / "multi"
    w.mkdir()
    cases["multi"] = (w, ["-m", "ptycho_torch.simulate", "--config-json",
                          '{"data": {"N": 48}, "trainng": {}}', "--set", "data.nphoton=3",
                          "--train-out", "r/train.cxi", "--test-out", "r/test.cxi",
                          "--report-dir", "rep/sim"])
    w = root / "yaml"
    w.mkdir()
    (w / "exp.yaml").write_text("training:\n  learning_rate: 1e-3\n  loss: l2\n")
    cases["yaml"] = (w, ["-m", "ptycho_torch.simulate", "--config", "exp.yaml",
                         "--train-out", "r/train.cxi", "--test-out", "r/test.cxi",
                         "--report-dir", "rep/sim"])
    before = {k: _tree(wd) for k, (wd, _) in cases.items()}
    procs = {k: subprocess.Popen([sys.executable, *a], cwd=wd, env=env, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for k, (wd, a) in cases.items()}
    yield cases, before, procs
    for p in procs.values():
        if p.poll() is None:
            p.kill()
            p.communicate()


@pytest.fixture(scope="module")
def cli_runs(_cli_procs) -> dict:
    cases, before, procs = _cli_procs
    out = {}
    for k, p in procs.items():
        stdout, stderr = p.communicate(timeout=120)
        wd = cases[k][0]
        out[k] = {"rc": p.returncode, "stdout": stdout, "stderr": stderr,
                  "new_files": _tree(wd) - before[k]}
    return out


@pytest.mark.parametrize("case,keys", [
    ("multi", ["data.N", "trainng", "data.nphoton"]),
    ("yaml", ["training.loss"]),
])
@pytest.mark.slow
def test_cli_subprocess_exit_2_and_writes_nothing(cli_runs, case, keys):
    r = cli_runs[case]
    assert r["rc"] == 2, r["stderr"]
    assert "Traceback" not in r["stderr"]
    errors = [line for line in r["stderr"].splitlines() if line.startswith("error: ")]
    assert sorted(e.split(":")[1].strip() for e in errors) == sorted(keys)
    assert f"{len(keys)} problem(s) found; nothing was written." in r["stderr"]
    assert r["new_files"] == set()


@pytest.mark.parametrize("experiment,overrides,key,words",
                         [c[1:] for c in BAD_CONFIGS], ids=[c[0] for c in BAD_CONFIGS])
def test_bad_config_through_the_cli_exits_2_and_writes_nothing(work, capsys, experiment,
                                                               overrides, key, words):
    """Every bad config above, given to a step CLI: exit 2, the key path named, no output."""
    from ptycho_torch import simulate
    sets = [a for k, v in (overrides or {}).items() for a in ("--set", f"{k}={json.dumps(v)}")]
    before = _tree(work)
    rc = simulate.main(["--config-json", json.dumps(experiment or {}), *sets,
                        "--train-out", "r/train.cxi", "--test-out", "r/test.cxi",
                        "--report-dir", "rep/simulate"])
    err = capsys.readouterr().err
    assert rc == 2
    assert f"error: {key}: " in err and words in err and "Traceback" not in err
    assert _tree(work) == before
