"""The Snakemake workflow, run for real on a tiny experiment (tests/configs/tiny.yaml).

One module-scoped end-to-end run (``first``), then the reruns (``reruns``) that build on
it: nothing changed, then a training setting changed. Tests run in file order.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from conftest import REPO, TINY, copy_workflow, jobs_run, run_snakemake
from ptycho_torch.config import ExperimentConfig
from ptycho_torch.config_factory import resolve_config
from ptycho_torch.evidence import RUN_ID_PATTERN, sha256_file

STEPS = ("simulate", "validate", "train", "infer", "report")
EXP = "tiny"
PRODUCTS = {
    "simulate": ("train.cxi", "test.cxi"),
    "validate": ("payload.json",),
    "train": ("model.pt", "history.csv", "loss.png"),
    "infer": ("reconstruction.h5", "metrics.json", "reconstruction.png"),
    "report": ("index.md",),
}


def run_dirs(workdir: Path) -> list[Path]:
    return sorted(p for p in (workdir / "reports").glob("*") if RUN_ID_PATTERN.match(p.name))


# ---------------------------------------------------------------- static checks

def config_schema_script():
    """workflow/scripts/config_schema.py as a module (the schema generator)."""
    spec = importlib.util.spec_from_file_location("config_schema",
                                                  REPO / "workflow/scripts/config_schema.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_schema_mirrors_the_config_dataclasses():
    module = config_schema_script()
    committed = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    assert committed == module.config_schema(), (
        "workflow/schemas/config.schema.yaml is out of date: run "
        "python workflow/scripts/config_schema.py > workflow/schemas/config.schema.yaml")


def test_default_config_is_complete_and_valid():
    loaded = yaml.safe_load((REPO / "config/config.yaml").read_text())
    workflow_level = config_schema_script().WORKFLOW_SETTINGS  # run_id, compare_baseline: not science
    assert set(loaded) - set(dataclasses.asdict(ExperimentConfig())) <= set(workflow_level)
    loaded = {k: v for k, v in loaded.items() if k not in workflow_level}
    resolve_config(loaded)

    def keys(tree: dict, prefix: str = "") -> set[str]:
        return {k2 for k, v in tree.items()
                for k2 in (keys(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k})}
    assert keys(loaded) == keys(dataclasses.asdict(ExperimentConfig()))


@pytest.mark.slow
def test_dry_run_of_the_default_config_lists_every_rule(workflow_copy):
    out = run_snakemake(workflow_copy, "--dry-run")
    assert out.returncode == 0, out.stdout
    assert jobs_run(out.stdout) == {*STEPS, "all"}
    assert not (workflow_copy / "results").exists() and not (workflow_copy / "reports").exists()


@pytest.mark.slow
def test_timed_steps_declare_the_threads_their_torch_uses(workflow_copy):
    """Training and reconstruction times are reported (compare, studies): each of those steps
    asks the scheduler for the cores its torch uses (execution.threads, 2 by default) and
    hands them to torch, so no other job shares them."""
    out = run_snakemake(workflow_copy, "compare", "--dry-run", "--printshellcmds")
    assert out.returncode == 0, out.stdout
    for rule in ("train", "infer", "baseline_train", "baseline_infer", "iterative"):
        job = re.search(rf"^rule {rule}:\n(.*?)^Shell command: (.*?)$", out.stdout,
                        re.MULTILINE | re.DOTALL)
        assert job and re.search(r"^\s+threads: 2$", job.group(1), re.MULTILINE), rule
        assert " --threads 2 " in job.group(2), rule


@pytest.mark.slow
def test_named_targets_stop_at_their_step(workflow_copy):
    out = run_snakemake(workflow_copy, "train", "--dry-run", "--configfile", TINY)
    assert out.returncode == 0, out.stdout
    assert jobs_run(out.stdout) == {"simulate", "validate", "train"}


@pytest.mark.slow
def test_bad_settings_fail_before_any_step_naming_every_key(workflow_copy):
    (workflow_copy / "bad.yaml").write_text(
        "model:\n  n_filters_scale: 0\ntraining:\n  epoch: 3\n")
    out = run_snakemake(workflow_copy, "--configfile", TINY, "bad.yaml")
    assert out.returncode != 0
    assert "model.n_filters_scale: 0 is out of range" in out.stdout
    assert "training.epoch: unknown key; did you mean 'epochs'?" in out.stdout
    assert not list(workflow_copy.glob("results/*/train/model.pt"))
    assert not (workflow_copy / "reports").exists()


@pytest.mark.slow
def test_a_malformed_run_id_is_refused(workflow_copy):
    out = run_snakemake(workflow_copy, "--dry-run", "--config", "run_id=yesterday")
    assert out.returncode != 0 and "run_id" in out.stdout


# ---------------------------------------------------------------- one tiny end-to-end run

@dataclass(frozen=True)
class FirstRun:
    workdir: Path
    out: subprocess.CompletedProcess
    run_dir: Path


@pytest.fixture(scope="module")
def first(tmp_path_factory) -> FirstRun:
    workdir = copy_workflow(tmp_path_factory.mktemp("e2e"))
    out = run_snakemake(workdir, "--configfile", TINY)
    assert out.returncode == 0, out.stdout
    (run_dir,) = run_dirs(workdir)
    return FirstRun(workdir, out, run_dir)


@pytest.mark.slow
def test_every_product_exists(first):
    for step, names in PRODUCTS.items():
        for name in names:
            assert (first.workdir / "results" / EXP / step / name).stat().st_size > 0
    for step in STEPS:
        assert (first.workdir / f"results/{EXP}/logs/{step}.log").is_file()
        assert (first.workdir / f"results/{EXP}/benchmarks/{step}.tsv").is_file()
    metrics = json.loads((first.workdir / f"results/{EXP}/infer/metrics.json").read_text())
    assert {"mae", "psnr", "ssim", "frc50"} <= set(metrics["amplitude"]) & set(metrics["phase"])


@pytest.mark.slow
def test_every_step_left_complete_evidence_under_one_run_id(first):
    assert sorted(p.name for p in (first.run_dir / EXP).iterdir()) == sorted(STEPS)
    for step in STEPS:
        step_dir = first.run_dir / EXP / step
        manifest = json.loads((step_dir / "manifest.json").read_text())
        assert manifest["run_id"] == first.run_dir.name and manifest["status"] == "ok"
        assert {"summary.md", f"{step}.log"} <= set(manifest["files"])
        for name, entry in manifest["files"].items():
            assert sha256_file(step_dir / name) == entry["sha256"], (step, name)
        for path, entry in manifest["products"].items():
            assert sha256_file(first.workdir / path) == entry["sha256"], (step, path)
        assert {f"results/{EXP}/{step}/{n}" for n in PRODUCTS[step]} <= set(manifest["products"])


@pytest.mark.slow
def test_the_run_index_and_reports_latest(first):
    index = (first.run_dir / "index.md").read_text()
    assert "| amplitude |" in index and "| phase |" in index
    for step in STEPS:
        assert f"({EXP}/{step}/summary.md)" in index
    for png in ("loss.png", "reconstruction.png"):
        assert f"]({EXP}/report/{png})" in index
        assert (first.run_dir / EXP / "report" / png).is_file()
    listing = json.loads((first.run_dir / "index.json").read_text())
    assert {p["run_id"] for p in listing["products"]} == {first.run_dir.name}
    latest = first.workdir / "reports" / "latest"
    assert latest.is_symlink() and os.readlink(latest) == first.run_dir.name
    copy = (first.workdir / f"results/{EXP}/report/index.md").read_text()
    assert f"../../../reports/{first.run_dir.name}/{EXP}/report/loss.png" in copy


@pytest.mark.slow
def test_snakemake_html_report(first):
    out = run_snakemake(first.workdir, "--configfile", TINY, "--report", "report.html")
    assert out.returncode == 0, out.stdout
    assert (first.workdir / "report.html").stat().st_size > 10_000


# ---------------------------------------------------------------- reruns

@dataclass(frozen=True)
class Reruns:
    unchanged: subprocess.CompletedProcess
    epochs: subprocess.CompletedProcess
    mtimes_before: dict[str, float]


def mtimes(workdir: Path) -> dict[str, float]:
    return {str(p.relative_to(workdir)): p.stat().st_mtime
            for p in (workdir / "results" / EXP).glob("*/*") if p.parent.name in PRODUCTS}


@pytest.fixture(scope="module")
def reruns(first) -> Reruns:
    unchanged = run_snakemake(first.workdir, "--configfile", TINY)
    before = mtimes(first.workdir)
    (first.workdir / "epochs.yaml").write_text("training:\n  epochs: 1\n")
    epochs = run_snakemake(first.workdir, "--configfile", TINY, "epochs.yaml")
    return Reruns(unchanged, epochs, before)


@pytest.mark.slow
def test_second_run_has_nothing_to_do_and_makes_no_run_directory(first, reruns):
    assert reruns.unchanged.returncode == 0, reruns.unchanged.stdout
    assert "Nothing to be done" in reruns.unchanged.stdout
    assert jobs_run(reruns.unchanged.stdout) == set()


@pytest.mark.slow
def test_changing_epochs_reruns_training_and_after_but_not_simulation(first, reruns):
    assert reruns.epochs.returncode == 0, reruns.epochs.stdout
    assert jobs_run(reruns.epochs.stdout) == {"validate", "train", "infer", "report", "all"}
    after = mtimes(first.workdir)
    for name in PRODUCTS["simulate"]:
        path = f"results/{EXP}/simulate/{name}"
        assert after[path] == reruns.mtimes_before[path]
    model = f"results/{EXP}/train/model.pt"
    assert after[model] > reruns.mtimes_before[model]
    old, new = run_dirs(first.workdir)
    assert old == first.run_dir
    assert sorted(p.name for p in (new / EXP).iterdir()) == ["infer", "report", "train", "validate"]
    listing = json.loads((new / "index.json").read_text())
    made_by = {p["path"]: p["run_id"] for p in listing["products"]}
    assert made_by[f"results/{EXP}/simulate/train.cxi"] == old.name
    assert made_by[f"results/{EXP}/train/model.pt"] == new.name
    assert os.readlink(first.workdir / "reports" / "latest") == new.name


@pytest.mark.slow
def test_execution_settings_rerun_nothing(first, reruns):
    (first.workdir / "execution.yaml").write_text("execution:\n  threads: 2\n  device: cpu\n")
    out = run_snakemake(first.workdir, "--dry-run", "--configfile", TINY, "epochs.yaml",
                        "execution.yaml")
    assert out.returncode == 0 and "Nothing to be done" in out.stdout, out.stdout


@pytest.mark.slow
def test_inference_settings_rerun_only_inference_and_report(first, reruns):
    (first.workdir / "inference.yaml").write_text("inference:\n  stitch: uniform\n")
    out = run_snakemake(first.workdir, "--dry-run", "--configfile", TINY, "epochs.yaml",
                        "inference.yaml")
    assert out.returncode == 0, out.stdout
    assert jobs_run(out.stdout) == {"infer", "report", "all"}


@pytest.mark.slow
def test_code_changes_rerun_the_steps_that_import_it(first, reruns):
    model = first.workdir / "ptycho_torch" / "model.py"
    model.write_text(model.read_text() + "\n# edited\n")
    out = run_snakemake(first.workdir, "--dry-run", "--configfile", TINY, "epochs.yaml")
    assert out.returncode == 0, out.stdout
    # validate reads checkpoints with model.py (training.init_model), so it reruns too
    assert jobs_run(out.stdout) == {"validate", "train", "infer", "report", "all"}
