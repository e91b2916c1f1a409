"""Shared by several rule files (config checks, the run id, paths and parameter helpers).
What one stage alone uses is defined in its own rule file, beside its rules.

Rerun policy. Snakemake reruns a job when an output is missing or older than an
input whose content changed (mtime), or when its input list, its `params` or its
unformatted `shell:` text changed. So:

* each rule's `params` hold only the config sections its products depend on;
* each rule's inputs include the source files of its step (`step_sources`), so
  code changes rerun it;
* the run id reaches the commands only as `$PTYCHO_RUN_ID` in the environment and
  the execution settings only through the `EXECUTION` global: their values are
  neither in `params` nor in the unformatted `shell:` text (which holds the names
  only), so they never trigger a rerun; no declared output contains the run id.
"""

import ast
import dataclasses
import importlib.metadata
import json
import os
import shlex
import sys
from pathlib import Path

import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from ptycho_torch.config import SCIENCE_SECTIONS, ExperimentConfig
from ptycho_torch.config_factory import ConfigError, data_settings_read, resolve_config
from ptycho_torch.evidence import is_run_id, new_run_id
from ptycho_torch.generators import GENERATORS


def workflow_keys(schema_file: Path) -> frozenset[str]:
    """The workflow-level settings (run_id, compare_baseline, ...): top-level keys of the
    schema that are not fields of the experiment dataclasses. They steer Snakemake only;
    no step sees them (their schema: WORKFLOW_SETTINGS in workflow/scripts/config_schema.py)."""
    properties = yaml.safe_load(schema_file.read_text())["properties"]
    return frozenset(properties) - {f.name for f in dataclasses.fields(ExperimentConfig)}


def check_config(cfg: dict) -> None:
    """Fail with every problem of the experiment settings at once, each named by its key path
    (types, ranges, unknown keys with a "did you mean", cross-field checks). Workflow-level
    keys are left to the schema."""
    try:
        resolve_config({k: v for k, v in cfg.items() if k not in WORKFLOW_KEYS})
    except ConfigError as exc:
        lines = "\n".join(f"  error: {p}" for p in exc.problems)
        raise WorkflowError(
            f"invalid configuration, {len(exc.problems)} problem(s):\n{lines}"
        ) from None


def run_id(cfg: dict) -> str:
    """This invocation's run id: `--config run_id=...`, else the one inherited through
    $PTYCHO_RUN_ID (cluster jobs re-read the Snakefile), else the UTC time now.

    It is exported as $PTYCHO_RUN_ID: local jobs inherit it and the SLURM executor
    submits with --export=ALL, so every job of an invocation writes to one reports/<run_id>/.
    """
    value = str(cfg.get("run_id") or os.environ.setdefault("PTYCHO_RUN_ID", new_run_id()))
    if not is_run_id(value):
        raise WorkflowError(f"run_id: {value!r} is not a UTC time YYYY-MM-DDTHHMMSSZ")
    os.environ["PTYCHO_RUN_ID"] = value
    return value


def step_sources(step: str) -> list[str]:
    """The code whose changes rerun a step (Snakemake cannot see into shell commands):
    `ptycho_torch/<step>.py`, the package modules it imports anywhere, and the modules
    those import at module level, transitively. (Imports inside library functions serve
    other steps: following them would make e.g. simulate depend on the model.) The modules
    of the registered generators count as imports of model.py, which builds them by name."""
    todo, seen = [(step, True), ("__init__", False)], set()
    while todo:
        name, everywhere = todo.pop()
        path = PACKAGE / f"{name}.py"
        if name in seen or not path.is_file():
            continue
        seen.add(name)
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree) if everywhere else tree.body:
            todo += [(module, False) for module in _package_imports(node)]
        if name == "model":
            modules = [target.split(":")[0] for target in GENERATORS.values()]
            todo += [(module.split(".")[-1], False) for module in modules]
    return sorted(os.path.relpath(PACKAGE / f"{name}.py") for name in seen)


def _package_imports(node: ast.AST) -> list[str]:
    """Names of the ptycho_torch modules an import statement may load."""
    if isinstance(node, ast.ImportFrom) and node.module == "ptycho_torch":
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ptycho_torch."):
        return [node.module.split(".")[1]]
    if isinstance(node, ast.Import):
        return [a.name.split(".")[1] for a in node.names if a.name.startswith("ptycho_torch.")]
    return []


def installed_version(package: str) -> str:
    """The installed version of ``package``, or "absent" (package metadata; imports nothing)."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def result(step: str, name: str = "") -> str:
    """Deterministic product path results/<experiment>/<step>/<name>."""
    return str(Path("results", EXP, step, name))


def log_path(step: str, exp: str = "") -> str:
    """The log Snakemake keeps of a step (its output): results/<experiment>/logs/<step>.log."""
    return f"results/{exp or EXP}/logs/{step}.log"


def benchmark_path(step: str, exp: str = "") -> str:
    """Snakemake's time and memory of a rule: results/<experiment>/benchmarks/<step>.tsv."""
    return f"results/{exp or EXP}/benchmarks/{step}.tsv"


def output_dir(name: str):
    """A params function: the directory of the rule's output ``name`` (the step's --out-dir),
    derived from the output rather than written out again."""
    return lambda wildcards, output: str(Path(output[name]).parent)


def sealed_files(steps: tuple[str, ...], exp: str = "") -> str:
    """Shell-quoted log and benchmark files of ``steps`` (rules of experiment ``exp``) for
    the --seal option of the report and study steps: a step that runs after them records
    their sha256 and size in its manifest, so the audit covers them (ptycho_torch/audit.py)."""
    return " ".join(shlex.quote(f(step, exp)) for step in steps for f in (log_path, benchmark_path))


def config_json(*sections: str) -> str:
    """The named config sections as one JSON object (for --config-json {params...:q}); of
    `data` only the settings the data step reads (with `source: file`, no simulation
    settings: editing them reruns nothing)."""
    chosen = {s: data_settings_read(config[s]) if s == "data" else config[s] for s in sections}
    return json.dumps(chosen, sort_keys=True, separators=(",", ":"))


def set_args(section: str) -> str:
    """A config section as shell-quoted `--set section.key=value` options."""
    return " ".join(
        f"--set {shlex.quote(f'{section}.{k}={json.dumps(v)}')}"
        for k, v in sorted(config[section].items())
    )


WORKFLOW_KEYS = workflow_keys(Path(workflow.basedir, "workflow/schemas/config.schema.yaml"))
check_config(config)  # first: it lists every problem, the schema only the first one
validate(config, "../schemas/config.schema.yaml")  # the same checks; fills in defaults
PACKAGE = Path(workflow.basedir) / "ptycho_torch"
PYTHON = sys.executable  # the interpreter running Snakemake also runs the steps
EXP = config["experiment"]
RUN_ID = run_id(config)
COMPARE = config["compare_baseline"]  # the report waits for compare.smk's method comparison


envvars:
    "PTYCHO_RUN_ID",  # handed to every job, whatever the executor


REPORTS = f"reports/$PTYCHO_RUN_ID/{EXP}"  # + /<step>: expanded by the shell at run time
EXECUTION = set_args("execution")
# Torch threads of the training rules (`threads:`): Snakemake caps them at --cores and
# `--set-threads train=N` changes them; the rule hands its {threads} to the step (`--threads`,
# overriding execution.threads, which stays the value outside Snakemake).
THREADS = max(1, config["execution"]["threads"])


def train_shell(extra: str, report_dir: str) -> str:
    """Shell command of a training rule: one process, or data-parallel under torchrun when the
    rule's `processes` resource is above 1. Placeholders stay for Snakemake to fill."""
    return (
        "if [ {resources.processes} -gt 1 ]; then"
        " set -- -m torch.distributed.run --standalone --nproc_per_node {resources.processes};"
        " else set --; fi;"
        ' {PYTHON:q} "$@" -m ptycho_torch.train --payload {input.payload} --data {input.data}'
        f" --out-dir {{params.out_dir}} {extra} {{EXECUTION}} --threads {{threads}}"
        f" --report-dir {report_dir}/train > {{log}} 2>&1"
    )


SCIENCE = config_json(*SCIENCE_SECTIONS)


# Rules whose log and benchmark files the report seals: the steps before it (compare.smk's
# too when the report embeds the comparison) and a study's points (studies.smk).
PROBE_WARMUP = config["model"]["probe_source"] == "iterative"  # train.smk: rule probe_warmup
WARMUP_STEPS = ("probe_warmup",) if PROBE_WARMUP else ()
PIPELINE_STEPS = ("simulate", "validate", *WARMUP_STEPS, "train", "infer")
COMPARED = config["compare_methods"]  # compare.smk: the methods the comparison runs
METHOD_STEPS = {
    "pinn": (),
    "supervised": ("baseline_train", "baseline_infer"),
    "iterative": ("iterative",),
    "pinn_iterative": ("hybrid",),
}
COMPARISON_STEPS = (*(step for name in COMPARED for step in METHOD_STEPS[name]), "compare")
