"""Config factory: experiment YAML + overrides -> validated, resolved payloads.

Precedence (highest first): explicit ``overrides`` (``{"training.epochs": 3}``
or ``--set training.epochs=3``) > the experiment file/mapping > the dataclass
defaults in :mod:`ptycho_torch.config`. Validation collects *all* problems,
each named by its key path, before raising :class:`ConfigError`.

The inference payload starts from the config a checkpoint was trained in
(:func:`load_checkpoint_config`): the checkpoint is read here, so that the data flow
config -> payload -> step never loops back through the network's module.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml

from ptycho_torch.config import (SCIENCE_SECTIONS, SIMULATION_ONLY, ExecutionConfig,
                                 ExperimentConfig)


class ConfigError(ValueError):
    """Invalid configuration or data; ``problems`` holds one message per finding."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class TrainingPayload:
    """Everything the train step needs, resolved and validated."""
    config: ExperimentConfig
    train_data_file: str
    output_dir: str
    overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class InferencePayload:
    """Everything the infer step needs; ``config`` comes from the checkpoint."""
    config: ExperimentConfig
    model_path: str
    test_data_file: str
    output_dir: str
    overrides: tuple[str, ...] = ()


# ---------------------------------------------------------------- parsing

class _YamlLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads ``1e-3`` and ``1.0e6`` as floats.

    PyYAML implements YAML 1.1, where a float needs a dot and a signed exponent
    (``1.0e-3``, ``1.0e+6``); ``1e-3`` would silently become the string ``'1e-3'``.
    """


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def load_yaml(text: str) -> Any:
    """Parse YAML text safely, reading ``1e-3`` as a number (see :class:`_YamlLoader`)."""
    return yaml.load(text, Loader=_YamlLoader)  # noqa: S506 - a SafeLoader subclass


def _looks_numeric(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def _check_value(value: Any, f: dataclasses.Field, path: str, problems: list[str]) -> Any:
    """Type/range check of one leaf value against its field spec; returns the coerced value."""
    md, kind = f.metadata, f.type
    if kind == "bool":
        if not isinstance(value, bool):
            problems.append(f"{path}: expected true or false, got {value!r}")
        return value
    if kind in ("int", "float"):
        ok_int = isinstance(value, int) and not isinstance(value, bool)
        ok = ok_int or (kind == "float" and isinstance(value, float))
        if not ok:
            hint = (" (a quoted number, or a YAML 1.1 float without a dot such as 1e-3: "
                    "write 1.0e-3)") if isinstance(value, str) and _looks_numeric(value) else ""
            problems.append(f"{path}: expected {'an integer' if kind == 'int' else 'a number'}, "
                            f"got {value!r}{hint}")
            return value
        try:
            value = float(value) if kind == "float" else value
        except OverflowError:
            value = math.inf
        if not math.isfinite(value):
            problems.append(f"{path}: must be finite, got {value!r}")
        elif (md["lo"] is not None and value < md["lo"]) or (md["hi"] is not None and value > md["hi"]):
            problems.append(f"{path}: {value!r} is out of range [{md['lo']}, {md['hi']}]")
        elif md["power_of_two"] and (value & (value - 1)) != 0:
            problems.append(f"{path}: {value!r} must be a power of two (16, 32, 64, ...)")
        return value
    if kind == "str":
        if not isinstance(value, str):
            problems.append(f"{path}: expected a string, got {value!r}")
        elif md.get("path"):
            if len(value) > 4096 or any(ord(c) < 32 for c in value):
                problems.append(f"{path}: {value[:80]!r} is not a usable file path (control "
                                "characters, or longer than 4096 characters)")
        elif md["choices"] and value not in md["choices"]:
            problems.append(f"{path}: {value!r} is not one of {', '.join(md['choices'])}")
        elif not md["choices"] and not re.fullmatch(r"[A-Za-z0-9_-]+", value):
            problems.append(f"{path}: {value!r} may hold only letters, digits, '-' and '_' "
                            "(ASCII; it names directories)")
        return value
    raise TypeError(f"unsupported field type {kind} at {path}")


def _build(cls: type, data: Any, path: str, problems: list[str]) -> Any:
    """Build dataclass ``cls`` from a mapping, appending every problem found."""
    if not isinstance(data, Mapping):
        problems.append(f"{path or 'config'}: expected a mapping of keys, got {data!r}")
        return cls()
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; allowed: {', '.join(fields)}"
            problems.append(f"{path + '.' if path else ''}{key}: unknown key{hint}")
    kwargs = {}
    for name, f in fields.items():
        if name not in data:
            continue
        sub = f"{path}.{name}" if path else name
        if dataclasses.is_dataclass(f.default_factory if f.default_factory is not dataclasses.MISSING else None):
            kwargs[name] = _build(f.default_factory, data[name], sub, problems)
        else:
            before = len(problems)
            value = _check_value(data[name], f, sub, problems)
            if len(problems) == before:  # a bad value was reported; keep the default
                kwargs[name] = value
    return cls(**kwargs)


def _cross_checks(cfg: ExperimentConfig, bad: set[str] = frozenset()) -> list[str]:
    """Checks that involve several fields; skips any check on a key in ``bad``.

    ``bad`` holds the key paths that already failed their own check (their value
    in ``cfg`` is the default, so a cross-check on them would be misleading).
    With ``data.source: file`` the simulation's settings (:data:`SIMULATION_ONLY`) are
    not cross-checked: nothing reads them.
    """
    def ok(*keys: str) -> bool:  # neither the keys nor a section holding them went wrong
        parts = [k.split(".") for k in keys]
        return not bad.intersection(".".join(p[:i]) for p in parts for i in range(1, len(p) + 1))

    problems = [] if cfg.data.source == "file" else _simulation_checks(cfg, ok)
    problems += _data_source_checks(cfg, ok)
    m = cfg.model
    C = m.gridsize ** 2
    if ok("model.gridsize", "model.n_neighbours") and C > 1 and m.n_neighbours < C:
        problems.append(f"model.n_neighbours: {m.n_neighbours} is below model.gridsize^2 = {C} "
                        f"(each group draws its {C} members from the anchor's n_neighbours "
                        "nearest positions, itself included)")
    return problems + _model_training_checks(cfg, ok)


def _model_training_checks(cfg: ExperimentConfig, ok: Callable[..., bool]) -> list[str]:
    """Options of the network and the training loop that only make sense together."""
    from ptycho_torch import generators  # here: steps without a network do not depend on it
    m, t, problems = cfg.model, cfg.training, []
    if ok("model.generator") and m.generator not in generators.GENERATORS:
        problems.append(f"model.generator: {m.generator!r} is not a registered generator; known: "
                        f"{', '.join(generators.GENERATORS)} (ptycho_torch/generators.py)")
    if ok("model.generator", "model.fno_modes", "data.N") and m.generator == "fno" and \
            2 * m.fno_modes > cfg.data.N:
        problems.append(f"model.fno_modes: {m.fno_modes} is above data.N / 2 = "
                        f"{cfg.data.N // 2} (the modes kept along an axis, from both ends of "
                        "the spectrum, must fit the N frequencies)")
    if ok("training.epochs", "training.init_model") and t.epochs == 0 and not t.init_model:
        problems.append("training.epochs: 0 trains nothing, and training.init_model is not set: "
                        "the model would keep its random initial weights; set training.epochs "
                        "> 0, or training.init_model to a model.pt to use as it is")
    if ok("model.probe_big", "model.pad_object") and m.probe_big and not m.pad_object:
        problems.append("model.probe_big: needs model.pad_object: true (without it the decoders "
                        "already predict the whole patch)")
    if ok("training.early_stopping_patience", "training.validation_fraction") and \
            t.early_stopping_patience and not t.validation_fraction:
        problems.append("training.early_stopping_patience: needs a validation loss: set "
                        "training.validation_fraction > 0")
    if ok("training.warmup_epochs", "training.lr_schedule") and t.warmup_epochs and \
            t.lr_schedule == "plateau":
        problems.append("training.warmup_epochs: not available with training.lr_schedule: "
                        "plateau (use 0)")
    elif ok("training.warmup_epochs", "training.epochs") and \
            0 < t.epochs <= t.warmup_epochs:
        problems.append(f"training.warmup_epochs: {t.warmup_epochs} leaves no epoch of the "
                        f"schedule within training.epochs = {t.epochs}")
    if ok("training.lr_final_fraction", "training.lr_schedule") and \
            t.lr_schedule == "exponential" and not t.lr_final_fraction:
        problems.append("training.lr_final_fraction: must be above 0 with training.lr_schedule: "
                        "exponential (it decays by a constant factor per epoch)")
    if ok("training.oversampling", "training.n_groups", "model.gridsize") and t.oversampling \
            and (not t.n_groups or m.gridsize == 1):
        problems.append("training.oversampling: needs training.n_groups > 0 and model.gridsize "
                        "> 1 (it reuses anchors with other neighbours)")
    if ok("training.n_groups", "training.batch_size") and 0 < t.n_groups < t.batch_size:
        problems.append(f"training.n_groups: {t.n_groups} groups do not fill one batch of "
                        f"training.batch_size = {t.batch_size}")
    return problems


def _simulation_checks(cfg: ExperimentConfig, ok: Callable[..., bool]) -> list[str]:
    """The simulation's settings: object sizes and probe, beamstop sizes that must fit the
    N x N patch/detector (all in px), and the files a chosen kind needs.

    Whether the files exist is checked by the step that reads them (simulate), so a
    checkpoint's config stays loadable on a machine without them.
    """
    d, o, problems = cfg.data, cfg.data.object, []
    if ok("data.object.amplitude_min", "data.object.amplitude_max") and \
            o.amplitude_min > o.amplitude_max:
        problems.append(f"data.object.amplitude_min: {o.amplitude_min} is above "
                        f"data.object.amplitude_max ({o.amplitude_max})")
    for key in ("train_size_px", "test_size_px"):
        if ok(f"data.object.{key}", "data.N") and getattr(o, key) < d.N + 4:
            problems.append(f"data.object.{key}: {getattr(o, key)} px is too small for patches "
                            f"of data.N = {d.N} px (need at least N + 4)")
    if ok("data.probe.pupil_radius_px", "data.N", "data.probe.kind") and \
            d.probe.kind == "focused_disk" and d.probe.pupil_radius_px >= d.N / 2:
        problems.append(f"data.probe.pupil_radius_px: {d.probe.pupil_radius_px} must be below "
                        f"N/2 = {d.N / 2} (the bright-field disk must fit on the detector)")
    if ok("data.probe.fwhm_px", "data.N", "data.probe.kind") and d.probe.kind == "gaussian" \
            and d.probe.fwhm_px > d.N / 2:
        problems.append(f"data.probe.fwhm_px: {d.probe.fwhm_px} must be at most N/2 = "
                        f"{d.N / 2} (the beam must fit in the N x N patch)")
    if ok("data.detector.beamstop_radius_px", "data.N") and \
            d.detector.beamstop_radius_px >= d.N / 2:
        problems.append(f"data.detector.beamstop_radius_px: {d.detector.beamstop_radius_px} "
                        f"must be below N/2 = {d.N / 2} (it would cover the whole detector)")
    needs = (("data.object.amplitude_file", d.object.kind == "image", d.object.amplitude_file,
              "data.object.kind is image"),
             ("data.probe.file", d.probe.kind == "file", d.probe.file, "data.probe.kind is file"))
    return problems + _missing_paths(needs, ok)


def _missing_paths(needs: tuple[tuple[str, bool, str, str], ...],
                   ok: Callable[..., bool]) -> list[str]:
    """One problem per ``(key, wanted, value, why)`` whose file path is wanted but empty."""
    return [f"{key}: a file path is required when {why}"
            for key, wanted, value, why in needs if wanted and ok(key) and not value]


def _data_source_checks(cfg: ExperimentConfig, ok: Callable[..., bool]) -> list[str]:
    """The measured files of ``data.source: file``: one is required, and a test split
    excludes a test file (their existence is checked by the simulate step)."""
    d = cfg.data
    problems = _missing_paths((("data.train_file", d.source == "file", d.train_file,
                                "data.source is file"),), ok)
    if ok("data.test_fraction", "data.test_file") and d.test_fraction > 0 and d.test_file:
        problems.append(f"data.test_fraction: {d.test_fraction} splits train_file, but "
                        f"data.test_file is set too ({d.test_file!r}): use one or the other")
    return problems


def set_path(tree: dict, dotted: str, value: Any) -> None:
    """Set ``tree['a']['b'] = value`` for ``dotted = 'a.b'``, creating mappings as needed."""
    *parents, leaf = dotted.split(".")
    node = tree
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError([f"{dotted}: cannot set below non-mapping key '{p}'"])
    node[leaf] = value


def parse_set_option(text: str) -> tuple[str, Any]:
    """Parse one ``--set key.path=value`` (value read as YAML: 3, 1e-3, true, text)."""
    if "=" not in text:
        raise ConfigError([f"--set {text}: expected key.path=value"])
    key, raw = text.split("=", 1)
    try:
        return key.strip(), load_yaml(raw)
    except yaml.YAMLError as exc:
        raise ConfigError([f"{key.strip()}: --set value {raw!r} is not valid YAML ({exc})"]) from None


def load_mapping(source: str | Path | Mapping | None) -> dict:
    """Experiment settings from a YAML/JSON file path, a mapping or nothing."""
    if source is None:
        return {}
    if isinstance(source, Mapping):
        return json.loads(json.dumps(source))  # deep copy, plain types
    path = Path(source)
    try:
        loaded = load_yaml(path.read_text())
    except FileNotFoundError:
        raise ConfigError([f"{path}: config file not found"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: config file cannot be read ({exc})"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: not valid YAML: {exc}"]) from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError([f"config: {path} must hold a mapping of keys at the top level, "
                           f"got {type(loaded).__name__}"])
    return loaded


def resolve_config(experiment: str | Path | Mapping | None = None,
                   overrides: Mapping[str, Any] | None = None) -> ExperimentConfig:
    """Merge defaults < experiment < overrides and validate; raises ConfigError."""
    tree = load_mapping(experiment)
    tree.pop("run_id", None)  # Snakemake-level setting, not part of the science config
    problems: list[str] = []
    for key, value in (overrides or {}).items():
        try:
            set_path(tree, key, value)
        except ConfigError as exc:
            problems += exc.problems
    cfg = _build(ExperimentConfig, tree, "", problems)
    bad = {p.split(":", 1)[0] for p in problems}
    problems += _cross_checks(cfg, bad)
    if problems:
        raise ConfigError(problems)
    return cfg


# ---------------------------------------------------------------- payloads

def config_to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def data_settings_read(data: Mapping[str, Any]) -> dict[str, Any]:
    """The ``data`` settings (a mapping as in the YAML) that the data step reads: all of them
    when simulating; with ``source: file`` all but :data:`SIMULATION_ONLY`."""
    if data.get("source", "simulate") != "file":
        return dict(data)
    return {k: v for k, v in data.items() if k not in SIMULATION_ONLY}


def config_hash(cfg: ExperimentConfig) -> str:
    """sha256 of the science sections (execution settings do not change results), with only
    the data settings the data step reads (:func:`data_settings_read`)."""
    d = config_to_dict(cfg)
    science = {k: d[k] for k in SCIENCE_SECTIONS}
    science["data"] = data_settings_read(science["data"])
    return hashlib.sha256(json.dumps(science, sort_keys=True).encode()).hexdigest()


def _format_overrides(overrides: Mapping[str, Any] | None) -> tuple[str, ...]:
    return tuple(f"{k}={json.dumps(v)}" for k, v in (overrides or {}).items())


def _with_execution(cfg: ExperimentConfig, execution: ExecutionConfig | None) -> ExperimentConfig:
    return cfg if execution is None else dataclasses.replace(cfg, execution=execution)


def create_training_payload(train_data_file: str | Path, output_dir: str | Path,
                            overrides: Mapping[str, Any] | None = None,
                            execution_config: ExecutionConfig | None = None, *,
                            experiment: str | Path | Mapping | None = None,
                            check_data: bool = True) -> TrainingPayload:
    """Validated training payload; with ``check_data`` the data file is cross-checked.

    Config, output and data problems are all collected before raising; when the
    config itself is invalid the data file is only checked for readability.
    """
    from ptycho_torch.data import check_data_file
    try:
        cfg = _with_execution(resolve_config(experiment, overrides), execution_config)
        problems = []
    except ConfigError as exc:
        cfg, problems = None, list(exc.problems)
    problems += _check_output_dir(output_dir)
    if check_data:
        problems += check_data_file(train_data_file, cfg)
    if problems:
        raise ConfigError(problems)
    return TrainingPayload(cfg, str(train_data_file), str(output_dir), _format_overrides(overrides))


def create_inference_payload(model_path: str | Path, test_data_file: str | Path,
                             output_dir: str | Path,
                             overrides: Mapping[str, Any] | None = None,
                             execution_config: ExecutionConfig | None = None) -> InferencePayload:
    """Validated inference payload: the checkpoint's config, then ``overrides`` on top."""
    from ptycho_torch.data import check_data_file
    base = config_to_dict(load_checkpoint_config(model_path))
    cfg = _with_execution(resolve_config(base, overrides), execution_config)
    problems = _check_output_dir(output_dir) + check_data_file(test_data_file, cfg, role="test")
    if problems:
        raise ConfigError(problems)
    return InferencePayload(cfg, str(model_path), str(test_data_file), str(output_dir),
                            _format_overrides(overrides))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load ``model.pt`` (written by :func:`ptycho_torch.model.save_checkpoint`: ``state_dict``,
    ``config``, ``meta``) safely: ``weights_only=True``, no arbitrary unpickling; on CPU."""
    import torch  # here, not at the top: Snakemake imports this module to check the config
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ConfigError([f"model: checkpoint {path} not found"]) from None
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a user error here
        raise ConfigError([f"model: {path} is not a readable ptycho_torch checkpoint ({exc})"]) from None


def load_checkpoint_config(path: str | Path) -> ExperimentConfig:
    """The experiment a checkpoint was trained in. Its ``inference`` and ``iterative``
    sections are left out (defaults): they do not shape the weights, reconstruction settings
    come from the step that uses the model, and a checkpoint written before a setting there
    was renamed still loads."""
    ckpt = load_checkpoint(path)
    if not isinstance(ckpt, dict) or "config" not in ckpt or "state_dict" not in ckpt:
        raise ConfigError([f"model: {path} lacks 'config' or 'state_dict'"])
    config = ckpt["config"]
    if isinstance(config, dict):
        config = {k: v for k, v in config.items() if k not in ("inference", "iterative")}
    return resolve_config(config)


def _check_output_dir(output_dir: str | Path) -> list[str]:
    """Outputs must stay inside the working directory (no ``..`` escapes, no absolute roots)."""
    resolved = Path(output_dir).resolve()
    if not resolved.is_relative_to(Path.cwd().resolve()):
        return [f"output_dir: {output_dir} escapes the working directory {Path.cwd()}"]
    return []


def payload_to_json(payload: TrainingPayload) -> str:
    """Canonical JSON of a training payload, with the config hash."""
    d = dataclasses.asdict(payload)
    d["config_hash"] = config_hash(payload.config)
    return json.dumps(d, indent=2, sort_keys=True) + "\n"


def payload_from_json(text: str) -> TrainingPayload:
    """Inverse of :func:`payload_to_json`; re-validates and checks the stored hash."""
    try:
        d = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError([f"payload: not valid JSON ({exc})"]) from None
    fields = ("config", "config_hash", "train_data_file", "output_dir", "overrides")
    missing = [k for k in fields if not isinstance(d, dict) or k not in d]
    if missing:
        raise ConfigError([f"payload.{k}: missing from the payload file" for k in missing])
    stored_hash = d.pop("config_hash")
    cfg = resolve_config(d.pop("config"))
    if stored_hash != config_hash(cfg):
        raise ConfigError([f"config_hash: stored {str(stored_hash)[:12]}... does not match the "
                           f"payload's content ({config_hash(cfg)[:12]}...): file edited?"])
    return TrainingPayload(cfg, d["train_data_file"], d["output_dir"], tuple(d["overrides"]))
