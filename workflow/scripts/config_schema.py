"""Print the Snakemake config schema that mirrors ``ptycho_torch/config.py``.

Run from the repository root after changing a field, its default or its range:

    python workflow/scripts/config_schema.py > workflow/schemas/config.schema.yaml

``tests/test_workflow.py`` fails while the committed schema differs from this output.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from ptycho_torch.config import ExperimentConfig  # noqa: E402
from ptycho_torch.evidence import RUN_ID_PATTERN  # noqa: E402

JSON_TYPES = {"int": "integer", "float": "number", "bool": "boolean", "str": "string"}
NAME_PATTERN = "^[A-Za-z0-9_-]+$"


def field_schema(f: dataclasses.Field) -> dict[str, Any]:
    """JSON schema of one leaf field: type, description, default, allowed values."""
    md = f.metadata
    unit = f" [{md['unit']}]" if md["unit"] else ""
    out: dict[str, Any] = {"type": JSON_TYPES[f.type], "description": md["doc"] + unit,
                           "default": f.default}
    if md["choices"]:
        out["enum"] = list(md["choices"])
    elif md["power_of_two"]:
        out["enum"] = [2 ** k for k in range(64) if md["lo"] <= 2 ** k <= md["hi"]]
    elif md.get("path"):
        out["maxLength"] = 4096
    elif f.type == "str":
        out["pattern"] = NAME_PATTERN
    else:
        out.update({k: md[m] for k, m in (("minimum", "lo"), ("maximum", "hi"))
                    if md[m] is not None})
    return out


def section_schema(cls: type) -> dict[str, Any]:
    """Schema of a config dataclass; nested dataclasses become nested objects."""
    props = {}
    for f in dataclasses.fields(cls):
        nested = f.default_factory if f.default_factory is not dataclasses.MISSING else None
        is_section = dataclasses.is_dataclass(nested)
        props[f.name] = section_schema(nested) if is_section else field_schema(f)
    return {"type": "object", "additionalProperties": False, "default": {}, "properties": props}


# Workflow-level settings: top-level keys that steer Snakemake and never reach a step (not in
# the experiment dataclasses, not in the config hash). common.smk takes every top-level schema
# key that is not a dataclass field for one of these; config/README.md documents them.
WORKFLOW_SETTINGS: dict[str, dict[str, Any]] = {
    "run_id": {
        "type": "string", "pattern": RUN_ID_PATTERN.pattern,
        "description": "name this invocation's report directory reports/<run_id>/ "
                       "(default: the UTC start time)"},
    "compare_baseline": {
        "type": "boolean", "default": False,
        "description": "also train the supervised baseline, compare it with the PINN "
                       "(workflow/rules/compare.smk) and put the table in the run index"},
    "compare_methods": {
        "type": "array", "default": ["pinn", "supervised", "iterative", "pinn_iterative"],
        "items": {"enum": ["pinn", "supervised", "iterative", "pinn_iterative"]},
        "uniqueItems": True, "contains": {"const": "pinn"},
        "description": "the methods the comparison (snakemake compare, a study) runs and "
                       "scores, in table order; pinn always (leave supervised out for a "
                       "measured scan: it trains on a ground-truth object)"},
    "infer_file_data": {
        "type": "string", "default": "", "maxLength": 4096,
        "description": "target infer_file: the data file to reconstruct (CXI or PtychoPINN "
                       ".npz); results in results/<experiment>/infer_file/<file stem>/"},
    "infer_file_model": {
        "type": "string", "default": "", "maxLength": 4096,
        "description": "target infer_file: the model.pt to reconstruct with "
                       "('' = this experiment's trained model)"},
    "study": {
        "type": "object", "additionalProperties": False, "required": ["key", "values"],
        "description": "a study (config/studies/*.yaml, workflow/rules/studies.smk): one "
                       "experiment per value of one setting, the methods compared at each",
        "properties": {
            "key": {"type": "string", "pattern": r"^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*$",
                    "description": "the setting studied, as a dotted key (data.nphotons)"},
            "values": {"type": "array", "minItems": 1,
                       "items": {"type": ["number", "string", "boolean"]},
                       "description": "its values, one experiment each, in plot order"}}},
}


def config_schema() -> dict[str, Any]:
    schema = section_schema(ExperimentConfig)
    del schema["default"]
    schema["properties"].update(WORKFLOW_SETTINGS)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "description": "ptycho_torch experiment (mirrors ptycho_torch/config.py)", **schema}


if __name__ == "__main__":
    print("# Generated from ptycho_torch/config.py by workflow/scripts/config_schema.py: "
          "do not edit.")
    print(yaml.safe_dump(config_schema(), sort_keys=False, width=100), end="")
