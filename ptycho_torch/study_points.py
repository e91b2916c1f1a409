"""The experiments of a study: one per value of one setting (workflow/rules/studies.smk).

A library module for the workflow, read at every parse of a study: it imports only the
config modules (no torch, no matplotlib). The step gathering a study's comparisons is
:mod:`ptycho_torch.studies`.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from ptycho_torch.config_factory import ConfigError, resolve_config, set_path


def value_label(value: Any) -> str:
    """A studied value as part of a name: 1.0e+3 -> 1e3, 1500.0 -> 1p5e3, 168 -> 168,
    0.25 -> 0p25, -3 -> m3, True -> true (letters, digits only)."""
    if isinstance(value, float) and abs(value) >= 1000 and value.is_integer():
        text = f"{value:.15e}"
        mantissa, exponent = text.split("e")
        text = f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    else:
        text = f"{value:g}" if isinstance(value, float) else str(value).lower()
    text = re.sub(r"e\+?(-?)0*(\d)", r"e\1\2", text)
    return re.sub(r"[^A-Za-z0-9]", "", text.replace(".", "p").replace("-", "m"))


def point_configs(cfg: dict[str, Any], workflow_keys: frozenset[str]
                  ) -> dict[str, tuple[Any, dict[str, Any]]]:
    """The experiments of the study in the Snakemake config ``cfg`` (its ``study`` setting):
    ``{name: (value, config)}`` in the order of ``study.values``, each config ``cfg``
    without ``study``, with the value set and ``experiment`` =
    ``<experiment>_<last part of the key>_<value label>``. Raises :class:`ConfigError`
    naming ``study.values[i]`` for every value whose experiment is invalid."""
    key, values = cfg["study"]["key"], cfg["study"]["values"]
    points: dict[str, tuple[Any, dict[str, Any]]] = {}
    problems = (["study.key: the experiment name is set per value, it cannot be studied"]
                if key == "experiment" else [])
    for i, value in enumerate(values):
        name = f"{cfg['experiment']}_{key.rsplit('.', 1)[-1]}_{value_label(value)}"
        point = copy.deepcopy({k: v for k, v in cfg.items() if k != "study"})
        try:
            set_path(point, key, value)
            point["experiment"] = name
            resolve_config({k: v for k, v in point.items() if k not in workflow_keys})
        except ConfigError as exc:
            problems += [f"study.values[{i}] = {value!r}: {p}" for p in exc.problems]
        if name in points:
            problems.append(f"study.values[{i}] = {value!r}: the experiment name {name!r} "
                            "comes twice (the values must differ)")
        points[name] = (value, point)
    if problems:
        raise ConfigError(problems)
    return points
