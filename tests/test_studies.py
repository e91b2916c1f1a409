"""Studies: one experiment per value (config/studies/*.yaml, workflow/rules/studies.smk,
ptycho_torch/study_points.py, ptycho_torch/studies.py). A dry run of every shipped study, the
refusal of an invalid value, and two tiny studies run end to end with all four methods (pty-chi
included), a tiny position-error study with position correction and a tiny probe-error study
with probe refinement: the table, the plot, each value's evidence under its own experiment, the
errors each value's methods report, and a clean audit."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from conftest import REPO, TINY, clean_env, copy_workflow, jobs_run, run_snakemake, run_step
from ptycho_torch import ptychi_solver
from ptycho_torch.config_factory import ConfigError
from ptycho_torch.evidence import RUN_ID_PATTERN, load_manifest
from ptycho_torch.study_points import point_configs, value_label

STUDIES = sorted((REPO / "config" / "studies").glob("*.yaml"))
POINT_RULES = ("simulate", "validate", "train", "infer", "baseline_train", "baseline_infer",
               "iterative", "hybrid", "comparison")
METHODS = ["pinn", "supervised", "iterative", "pinn_iterative"]
# A tiny study for the dry runs: two doses on the tiny experiment
TINY_STUDY = {"experiment": "tstudy", "study": {"key": "data.nphotons", "values": [1.0e4, 1.0e6]},
              "iterative": {"epochs": 4}, "inference": {"calibration_iterations": 10}}
POINTS = ["tstudy_nphotons_1e4", "tstudy_nphotons_1e6"]


@dataclass(frozen=True)
class TinyStudy:
    """A tiny version of a shipped study: the error-free value and one with errors, on the
    tiny experiment, short pty-chi and calibration, the refinement on."""
    name: str  # its experiment (and target study_<name>)
    key: str
    values: tuple[float, float]
    settings: dict  # what it adds to the tiny experiment
    record: str  # the metrics.json record of the error (products.positions_record, probe_record)

    def config(self) -> dict:
        short = {"iterative": {"epochs": 4}, "inference": {"calibration_iterations": 10}}
        merged = {k: {**short.get(k, {}), **self.settings.get(k, {})}
                  for k in {*short, *self.settings}}
        return {"experiment": self.name, "study": {"key": self.key, "values": list(self.values)},
                **merged}

    @property
    def points(self) -> list[str]:
        leaf = self.key.rsplit(".", 1)[-1]
        return [f"{self.name}_{leaf}_{value_label(v)}" for v in self.values]


TINY_STUDIES = [  # config/studies/position_error_corrected.yaml, probe_error_refined.yaml
    TinyStudy("tpos", "data.scan.position_error_px", (0.0, 1.0),
              {"iterative": {"position_correction": True}}, "positions"),
    TinyStudy("tprobe", "data.probe.given_defocus_m", (0.0, 1.0e-3),
              {"iterative": {"probe_refinement": True}, "model": {"probe_trainable": True}},
              "probe"),
]


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


@pytest.fixture(scope="module", params=TINY_STUDIES, ids=[s.name for s in TINY_STUDIES])
def studied(request, tmp_path_factory) -> tuple[Path, Path, TinyStudy]:
    """One run of a tiny study: (workdir, run directory, the study)."""
    if ptychi_solver.ptychi_version() is None:
        pytest.skip(ptychi_solver.PTYCHI_MISSING)
    study = request.param
    workdir = copy_workflow(tmp_path_factory.mktemp("study"))
    (workdir / "study.yaml").write_text(yaml.safe_dump(study.config()))
    out = run_snakemake(workdir, f"study_{study.name}", "--configfile", TINY, "study.yaml")
    assert out.returncode == 0, out.stdout[-5000:]
    (run_dir,) = [p for p in (workdir / "reports").iterdir() if RUN_ID_PATTERN.match(p.name)]
    return workdir, run_dir, study


@pytest.mark.slow
def test_study_run_gathers_four_methods_at_each_value(studied):
    workdir, _, study = studied
    results = workdir / "results" / study.name / "study"
    q = json.loads((results / "quality.json").read_text())
    assert q["key"] == study.key and [p["value"] for p in q["points"]] == list(study.values)
    assert [p["experiment"] for p in q["points"]] == study.points
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
    # the error changes what the methods are given: the PINN's scores differ between values
    pinn = [p["methods"]["pinn"]["amplitude"]["psnr"] for p in q["points"]]
    assert pinn[0] != pinn[1]
    rows = list(csv.DictReader((results / "quality.csv").open()))
    assert [(r[study.key], r["method"]) for r in rows] == [
        (str(v), n) for v in study.values for n in METHODS]
    assert float(rows[0]["amplitude_psnr"]) == q["points"][0]["methods"]["pinn"]["amplitude"]["psnr"]
    assert "## phase SSIM" in (results / "quality.md").read_text()
    assert (results / "quality.png").stat().st_size > 20000


@pytest.mark.slow
def test_study_values_report_the_error_given_and_what_refinement_made_of_it(studied):
    """Each value's iterative method records the given error (none at the error-free value)
    and its refined positions or probe, scored against the truth the file keeps."""
    workdir, _, study = studied
    records = [json.loads((workdir / f"results/{p}/iterative/metrics.json").read_text())[
        study.record] for p in study.points]
    assert all(r["refined"] is True for r in records)
    given = "given_rms_error_px" if study.record == "positions" else "given_error"
    final = "rms_error_px" if study.record == "positions" else "error"
    assert records[0].get(given, 0.0) == pytest.approx(0.0, abs=1e-6)  # no truth kept at 0
    assert records[1][given] > 0.01 and records[1][final] != records[1][given]


@pytest.mark.slow
def test_study_run_leaves_each_value_its_own_evidence_and_audits_clean(studied):
    workdir, run_dir, study = studied
    for point in study.points:
        steps = {p.name for p in (run_dir / point).iterdir()}
        assert steps == {"simulate", "validate", "train", "infer", "iterative", "hybrid",
                         "compare"}
        manifest, problem = load_manifest(run_dir / point / "iterative" / "manifest.json")
        assert problem is None and manifest["numbers"]["available"] is True
        assert manifest["experiment"] == point
        assert {p.name for p in (run_dir / f"{point}_baseline").iterdir()} == {"train", "infer"}
    manifest, problem = load_manifest(run_dir / study.name / "study" / "manifest.json")
    assert problem is None and manifest["status"] == "ok"
    assert set(manifest["inputs"]) == {f"results/{p}/compare/comparison.json" for p in study.points}
    # the study step seals every value's Snakemake logs and benchmarks (no report runs there)
    assert {f"results/{p}/{kind}/{rule}.{ext}" for p in study.points
            for kind, ext in (("logs", "log"), ("benchmarks", "tsv"))
            for rule in ("simulate", "train", "infer", "iterative", "hybrid", "compare")
            } <= set(manifest["sealed"])
    out = run_step("audit", "reports", "--json", cwd=workdir)
    assert out.returncode == 0, out.stdout[-3000:]
    doc = json.loads(out.stdout)
    uncovered = {r["item"] for r in doc["rows"] if "not covered" in r["message"]}
    assert uncovered == {f"results/{study.name}/{kind}/study.{ext}"
                         for kind, ext in (("logs", "log"), ("benchmarks", "tsv"))}


@pytest.mark.slow
def test_a_second_study_run_does_nothing(studied):
    workdir, _, study = studied
    out = run_snakemake(workdir, f"study_{study.name}", "--dry-run", "--configfile", TINY,
                        "study.yaml")
    assert out.returncode == 0 and jobs_run(out.stdout) == set(), out.stdout
