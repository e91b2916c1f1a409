"""Studies: one experiment per value (config/studies/*.yaml, workflow/rules/studies.smk,
ptycho_torch/studies.py). A dry run of every shipped study, the refusal of an invalid value,
and one tiny study run end to end with all three methods (pty-chi included): the table, the
plot, each value's evidence under its own experiment, and a clean audit."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, TINY, clean_env, copy_workflow, jobs_run, run_snakemake, run_step
from ptycho_torch import iterative
from ptycho_torch.config_factory import ConfigError
from ptycho_torch.reports import RUN_ID_PATTERN, load_manifest
from ptycho_torch.studies import point_configs, value_label

STUDIES = sorted((REPO / "config" / "studies").glob("*.yaml"))
POINT_RULES = ("simulate", "validate", "train", "infer", "baseline_train", "baseline_infer",
               "iterative", "hybrid", "comparison")
METHODS = ["pinn", "supervised", "iterative", "pinn_iterative"]
# The tiny study: two doses on the tiny experiment, short pty-chi and calibration.
TINY_STUDY = {"experiment": "tstudy", "study": {"key": "data.nphotons", "values": [1.0e4, 1.0e6]},
              "iterative": {"epochs": 4}, "inference": {"calibration_iterations": 10}}
POINTS = ["tstudy_nphotons_1e4", "tstudy_nphotons_1e6"]


def test_value_labels_name_experiments():
    assert [value_label(v) for v in (1.0e3, 1.0e9, 1500.0, 168, 0.25, -3.0, True, "grf")] == [
        "1e3", "1e9", "1p5e3", "168", "0p25", "m3", "true", "grf"]


def test_each_value_becomes_an_experiment_with_that_value():
    cfg = {"experiment": "s", "run_id": "2026-01-01T000000Z", "data": {"N": 16},
           "study": {"key": "data.scan.overlap", "values": [0.5, 0.8]}}
    points = point_configs(cfg, frozenset({"run_id", "study"}))
    assert list(points) == ["s_overlap_0p5", "s_overlap_0p8"]
    value, point = points["s_overlap_0p8"]
    assert value == 0.8 and point["data"]["scan"]["overlap"] == 0.8
    assert point["experiment"] == "s_overlap_0p8" and "study" not in point
    assert point["data"]["N"] == 16 and point["run_id"] == cfg["run_id"]
    assert cfg["data"] == {"N": 16}  # the study's own config is left alone


def test_invalid_values_are_all_named():
    cfg = {"experiment": "s", "study": {"key": "data.nphotons", "values": [1.0e3, -1.0, 0.5]}}
    with pytest.raises(ConfigError) as err:
        point_configs(cfg, frozenset({"study"}))
    assert len(err.value.problems) == 2
    assert err.value.problems[0].startswith("study.values[1] = -1.0: data.nphotons: -1.0 is out "
                                            "of range")
    assert err.value.problems[1].startswith("study.values[2] = 0.5: data.nphotons")
    with pytest.raises(ConfigError, match="did you mean"):
        point_configs({"experiment": "s", "study": {"key": "data.nphoton", "values": [1.0]}},
                      frozenset({"study"}))


@pytest.mark.slow
@pytest.mark.parametrize("path", STUDIES, ids=[p.stem for p in STUDIES])
def test_dry_run_of_each_study_runs_every_method_at_every_value(path, workflow_copy):
    cfg = yaml.safe_load(path.read_text())
    exp, leaf = cfg["experiment"], cfg["study"]["key"].rsplit(".", 1)[-1]
    out = run_snakemake(workflow_copy, f"study_{exp}", "--dry-run", "--configfile",
                        f"config/studies/{path.name}")
    assert out.returncode == 0, out.stdout
    points = [f"{exp}_{leaf}_{value_label(v)}" for v in cfg["study"]["values"]]
    assert jobs_run(out.stdout) == {f"{p}_{rule}" for p in points for rule in POINT_RULES} | {
        "study", f"study_{exp}"}
    for p in points:  # each value's comparison feeds the study step
        assert "--point" in out.stdout and f"results/{p}/compare/comparison.json" in out.stdout


@pytest.mark.slow
def test_a_study_with_an_invalid_value_stops_before_anything_runs(workflow_copy):
    bad = {**TINY_STUDY, "study": {"key": "data.nphotons", "values": [1.0e4, 0.0]}}
    (workflow_copy / "bad.yaml").write_text(yaml.safe_dump(bad))
    out = run_snakemake(workflow_copy, "study", "--dry-run", "--configfile", TINY, "bad.yaml")
    assert out.returncode != 0
    assert "invalid study, 1 problem(s)" in out.stdout
    assert "study.values[1] = 0.0: data.nphotons: 0.0 is out of range" in out.stdout
    assert not (workflow_copy / "results").exists()


@pytest.mark.slow
def test_a_values_rules_get_the_cluster_resources_of_the_rules_they_copy(workflow_copy):
    """profiles/slurm asks a GPU for `train`; a value's `<point>_train` asks the same."""
    (workflow_copy / "study.yaml").write_text(yaml.safe_dump(TINY_STUDY))
    out = subprocess.run([sys.executable, "-m", "snakemake", "--profile", "profiles/slurm",
                          "study_tstudy", "--dry-run", "--configfile", TINY, "study.yaml"],
                         cwd=workflow_copy, env=clean_env(), capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    jobs = dict(re.findall(r"^rule (\w+):\n(?:    .*\n)*?    resources: (.*)$", out.stdout,
                           flags=re.MULTILINE))
    for point in POINTS:
        for rule in ("train", "baseline_train"):
            assert "gpu=1" in jobs[f"{point}_{rule}"] and "mem_mb=32000" in jobs[f"{point}_{rule}"]
        assert "gpu" not in jobs[f"{point}_infer"]


@pytest.fixture(scope="module")
def studied(tmp_path_factory) -> tuple[Path, Path]:
    """One run of the tiny study: (workdir, run directory)."""
    if iterative.ptychi_version() is None:
        pytest.skip(iterative.PTYCHI_MISSING)
    workdir = copy_workflow(tmp_path_factory.mktemp("study"))
    (workdir / "study.yaml").write_text(yaml.safe_dump(TINY_STUDY))
    out = run_snakemake(workdir, "study_tstudy", "--configfile", TINY, "study.yaml")
    assert out.returncode == 0, out.stdout[-5000:]
    (run_dir,) = [p for p in (workdir / "reports").iterdir() if RUN_ID_PATTERN.match(p.name)]
    return workdir, run_dir


@pytest.mark.slow
def test_study_run_gathers_four_methods_at_each_value(studied):
    workdir, _ = studied
    q = json.loads((workdir / "results/tstudy/study/quality.json").read_text())
    assert q["key"] == "data.nphotons" and [p["value"] for p in q["points"]] == [1.0e4, 1.0e6]
    assert [p["experiment"] for p in q["points"]] == POINTS
    for point in q["points"]:
        assert list(point["methods"]) == METHODS
        for name, m in point["methods"].items():
            assert m["unavailable"] is None, name
            assert all(-1 <= m[part]["ssim"] <= 1 and m[part]["psnr"] > 0
                       for part in ("amplitude", "phase"))
            assert m["reconstruction_seconds"] > 0
        # the numbers are each value's own comparison's
        c = json.loads((workdir / point["comparison"]).read_text())
        assert {m["name"]: m["phase"]["psnr"] for m in c["methods"]} == {
            n: m["phase"]["psnr"] for n, m in point["methods"].items()}
    # the tenfold-per-decade dose changes the data: the PINN's scores differ between values
    pinn = [p["methods"]["pinn"]["amplitude"]["psnr"] for p in q["points"]]
    assert pinn[0] != pinn[1]
    rows = list(csv.DictReader((workdir / "results/tstudy/study/quality.csv").open()))
    assert [(r["data.nphotons"], r["method"]) for r in rows] == [
        (str(v), n) for v in (1.0e4, 1.0e6) for n in METHODS]
    assert float(rows[0]["amplitude_psnr"]) == q["points"][0]["methods"]["pinn"]["amplitude"]["psnr"]
    assert "## phase SSIM" in (workdir / "results/tstudy/study/quality.md").read_text()
    assert (workdir / "results/tstudy/study/quality.png").stat().st_size > 20000


@pytest.mark.slow
def test_study_run_leaves_each_value_its_own_evidence_and_audits_clean(studied):
    workdir, run_dir = studied
    for point in POINTS:
        steps = {p.name for p in (run_dir / point).iterdir()}
        assert steps == {"simulate", "validate", "train", "infer", "iterative", "hybrid",
                         "compare"}
        manifest, problem = load_manifest(run_dir / point / "iterative" / "manifest.json")
        assert problem is None and manifest["numbers"]["available"] is True
        assert manifest["experiment"] == point
        assert {p.name for p in (run_dir / f"{point}_baseline").iterdir()} == {"train", "infer"}
    manifest, problem = load_manifest(run_dir / "tstudy" / "study" / "manifest.json")
    assert problem is None and manifest["status"] == "ok"
    assert set(manifest["inputs"]) == {f"results/{p}/compare/comparison.json" for p in POINTS}
    out = run_step("audit", "reports", cwd=workdir)
    assert out.returncode == 0, out.stdout


@pytest.mark.slow
def test_a_second_study_run_does_nothing(studied):
    workdir, _ = studied
    out = run_snakemake(workdir, "study_tstudy", "--dry-run", "--configfile", TINY, "study.yaml")
    assert out.returncode == 0 and jobs_run(out.stdout) == set(), out.stdout
