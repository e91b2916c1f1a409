"""Provenance and the artifact-directory audit (python -m ptycho_torch.audit, snakemake audit).

One module-scoped project (``project``): the workflow copied into a throwaway git
repository (so manifests record a real commit), run on the tiny config, then again with an
inference setting changed (a second run directory remaking infer and report), then a third
time with nothing to do. Each mutation test copies its reports/ and results/ and damages
the copy; the audit must name the damage and exit 1, while the untouched copy audits clean.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from conftest import REPO, TINY, clean_env, copy_workflow, jobs_run, run_snakemake, run_step
from ptycho_torch import audit
from ptycho_torch.ledger import Ledger, Record
from ptycho_torch.evidence import (MANIFEST, SELF_HASH, code_version, is_run_id, load_manifest,
                                  manifest_digest, sha256_file)

EXP = "tiny"
STEPS = ("simulate", "validate", "train", "infer", "report")
FIELDS = ("files", "products", "inputs", "config_hash", "seed", "code", "packages", "host",
          "slurm_job_id", "started_utc", "ended_utc", "duration_s", SELF_HASH)
GIT = ("git", "-c", "user.name=audit test", "-c", "user.email=audit@example.org",
       "-c", "commit.gpgsign=false", "-c", "init.defaultBranch=main")


def load_benchmark():
    spec = importlib.util.spec_from_file_location("audit_benchmark", REPO / "benchmarks/audit.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_dirs(workdir: Path) -> list[Path]:
    return sorted(p for p in (workdir / "reports").iterdir() if is_run_id(p.name))


def git_commit_all(workdir: Path) -> str:
    """Make ``workdir`` a git repository with one commit of everything in it; its sha."""
    for args in (("init", "-q"), ("add", "-A"), ("commit", "-q", "-m", "audit fixture")):
        subprocess.run([*GIT, "-C", str(workdir), *args], check=True, capture_output=True)
    return subprocess.run(["git", "-C", str(workdir), "rev-parse", "HEAD"], check=True,
                          capture_output=True, text=True).stdout.strip()


def run_audit(*args: str) -> tuple[int, dict]:
    """``python -m ptycho_torch.audit ARGS --json``: exit status and the parsed JSON."""
    out = subprocess.run([sys.executable, "-m", "ptycho_torch.audit", *args, "--json"],
                         env=clean_env(), capture_output=True, text=True, timeout=300)
    assert "Traceback" not in out.stderr, out.stderr
    return out.returncode, json.loads(out.stdout)


def rows(doc: dict, level: str) -> list[dict]:
    return [r for r in doc["rows"] if r["level"] == level]


# ---------------------------------------------------------------- the project: three invocations

@dataclass(frozen=True)
class Project:
    workdir: Path
    commit: str
    first: str  # run id of the first invocation (all five steps)
    second: str  # run id of the second (inference setting changed: infer and report)
    idle: subprocess.CompletedProcess  # the third: nothing to do
    first_metrics: bytes  # results/tiny/infer/metrics.json as the first run made it

    def args(self) -> tuple[str, ...]:
        return ("--configfile", TINY, "stitch.yaml")


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Project:
    workdir = copy_workflow(tmp_path_factory.mktemp("audit"))
    commit = git_commit_all(workdir)
    out = run_snakemake(workdir, "--configfile", TINY)
    assert out.returncode == 0, out.stdout
    first_metrics = (workdir / f"results/{EXP}/infer/metrics.json").read_bytes()
    (workdir / "stitch.yaml").write_text("inference:\n  stitch: uniform\n")  # untracked
    out = run_snakemake(workdir, "--configfile", TINY, "stitch.yaml")
    assert out.returncode == 0, out.stdout
    assert jobs_run(out.stdout) == {"infer", "report", "all"}
    first, second = run_dirs(workdir)
    idle = run_snakemake(workdir, "--configfile", TINY, "stitch.yaml")
    return Project(workdir, commit, first.name, second.name, idle, first_metrics)


def copy_tree(project: Project, dest: Path) -> Path:
    """reports/ and results/ of the project (links kept) into ``dest``."""
    for top in ("reports", "results"):
        shutil.copytree(project.workdir / top, dest / top, symlinks=True)
    return dest


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.lstat().st_size, p.lstat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


# ---------------------------------------------------------------- run directories and manifests

@pytest.mark.slow
def test_two_invocations_make_two_run_directories_and_an_idle_one_none(project):
    assert project.first != project.second
    assert [p.name for p in run_dirs(project.workdir)] == [project.first, project.second]
    second = project.workdir / "reports" / project.second / EXP
    assert sorted(p.name for p in second.iterdir()) == ["infer", "report"]
    assert project.idle.returncode == 0 and "Nothing to be done" in project.idle.stdout
    assert os.readlink(project.workdir / "reports" / "latest") == project.second


@pytest.mark.slow
def test_manifests_record_full_provenance(project):
    run = project.workdir / "reports" / project.first / EXP
    made: dict[str, str] = {}
    for step in STEPS:
        m, problem = load_manifest(run / step / MANIFEST)
        assert problem is None, (step, problem)
        assert set(FIELDS) <= set(m), (step, set(FIELDS) - set(m))
        assert (m["run_id"], m["experiment"], m["step"], m["status"]) == \
            (project.first, EXP, step, "ok")
        assert m["code"] == {"git_commit": project.commit, "dirty": False}
        assert {"python", "torch", "numpy", "h5py", "snakemake"} <= set(m["packages"])
        assert m["seed"] is not None and len(m["config_hash"]) == 64
        assert m["slurm_job_id"] is None and m["duration_s"] >= 0
        assert m["started_utc"] <= m["ended_utc"]
        assert {"summary.md", f"{step}.log", "config.json"} <= set(m["files"])
        for path, entry in m["inputs"].items():  # inputs are traceable to their producers
            if path in made:
                assert entry["sha256"] == made[path], (step, path)
        made.update({path: e["sha256"] for path, e in m["products"].items()})
    assert {"results/tiny/simulate/train.cxi", "results/tiny/validate/payload.json"} <= \
        set(json.loads((run / "train" / MANIFEST).read_text())["inputs"])


@pytest.mark.slow
def test_the_run_index_records_every_step_and_its_manifest(project):
    run = project.workdir / "reports" / project.first
    index = json.loads((run / "index.json").read_text())
    listed = {s["step"]: s for s in index["steps"]}
    assert set(listed) == set(STEPS)
    for step in set(STEPS) - {"report"}:
        assert listed[step]["manifest_sha256"] == sha256_file(run / EXP / step / MANIFEST)
    text = (run / "index.md").read_text()
    assert all(f"]({EXP}/{step}/{MANIFEST})" in text for step in STEPS)
    assert f"![loss]({EXP}/report/loss.png)" in text and "| amplitude |" in text


def test_code_version_outside_git_and_in_a_repository_without_commits(tmp_path):
    (tmp_path / "ptycho_torch").mkdir()
    (tmp_path / "ptycho_torch" / "evidence.py").write_text("# tracked\n")
    assert code_version(tmp_path) == {"git_commit": "unknown", "dirty": None}
    subprocess.run([*GIT, "-C", str(tmp_path), "init", "-q"], check=True)
    assert code_version(tmp_path) == {"git_commit": "unknown", "dirty": None}  # not "HEAD"
    commit = git_commit_all(tmp_path)
    assert code_version(tmp_path) == {"git_commit": commit, "dirty": False}
    (tmp_path / "ptycho_torch" / "evidence.py").write_text("# edited\n")
    assert code_version(tmp_path) == {"git_commit": commit, "dirty": True}


@pytest.mark.slow
def test_invalid_config_json_is_refused_with_status_2(tmp_path):
    out = run_step("simulate", "--config-json", "{not json", "--train-out", "train.cxi",
                   "--test-out", "test.cxi", "--report-dir",
                   "reports/2026-01-01T000000Z/tiny/simulate", cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert "error: --config-json: not valid JSON" in out.stderr
    assert "Traceback" not in out.stderr and list(tmp_path.iterdir()) == []


def run_in_process(tmp_path: Path, body) -> tuple[int, Path]:
    """cli.run_step in ``tmp_path`` with the default config and ``body``; (status, step dir)."""
    from ptycho_torch import cli
    from ptycho_torch.config import ExperimentConfig
    step_dir = Path("reports/2026-01-01T000000Z/tiny/simulate")
    args = argparse.Namespace(report_dir=step_dir)
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        status = cli.run_step("simulate", args, [Path("results/out.bin")], body,
                              load_config=lambda a: ExperimentConfig())
    finally:
        os.chdir(old)
    return status, tmp_path / step_dir


def test_a_crashed_step_leaves_a_failed_summary_and_no_manifest(tmp_path):
    def body(cfg, rep):
        Path("results").mkdir()
        Path("results/out.bin").write_bytes(b"partial")
        raise RuntimeError("boom")
    status, step_dir = run_in_process(tmp_path, body)
    assert status == 1 and not (step_dir / MANIFEST).exists()
    assert not (tmp_path / "results/out.bin").exists()  # partial products removed
    assert (step_dir / "summary.md").read_text().startswith("# simulate: FAILED")
    assert "RuntimeError: boom" in (step_dir / "simulate.log").read_text()
    res = audit.audit([tmp_path / "reports"])
    assert res.count("finding") == 0 and res.count("warning") == 1
    assert res.exit_status(strict=True) == 1


def test_a_step_that_forgets_a_product_fails(tmp_path):
    status, step_dir = run_in_process(tmp_path, lambda cfg, rep: None)
    assert status == 1 and not (step_dir / MANIFEST).exists()
    assert "did not write its product(s): results/out.bin" in \
        (step_dir / "simulate.log").read_text()


def test_a_step_refused_during_its_body_leaves_no_run_directory(tmp_path):
    from ptycho_torch.config_factory import ConfigError

    def body(cfg, rep):
        raise ConfigError(["data.N: refused"])
    status, _ = run_in_process(tmp_path, body)
    assert status == 2 and not (tmp_path / "reports" / "2026-01-01T000000Z").exists()


# ---------------------------------------------------------------- the untouched tree

@pytest.mark.slow
def test_untouched_tree_audits_clean_and_the_audit_writes_nothing(project, tmp_path):
    root = copy_tree(project, tmp_path)
    before = snapshot(root)
    status, doc = run_audit(str(root / "reports"))
    assert status == 0, rows(doc, "finding")
    assert doc["clean"] and doc["counts"]["finding"] == 0 and doc["counts"]["warning"] == 0
    assert doc["stats"]["steps"] == 7 and doc["stats"]["bytes_hashed"] > 0
    made_by = {r["item"]: r["message"] for r in doc["rows"] if r["kind"] == "product"}
    assert made_by["results/tiny/simulate/train.cxi"] == f"made by {project.first}/tiny/simulate"
    assert made_by["results/tiny/infer/metrics.json"] == f"made by {project.second}/tiny/infer"
    assert run_audit("--strict", str(root))[0] == 0  # the project directory works too
    assert snapshot(root) == before


@pytest.mark.slow
def test_auditing_one_run_flags_products_of_the_other_as_information(project):
    reports = project.workdir / "reports"
    status, doc = run_audit(str(reports / project.second))
    assert status == 0, rows(doc, "finding")
    info = {r["item"]: r["message"] for r in rows(doc, "info")}
    assert f"{project.first}/tiny/simulate" in info["results/tiny/simulate/test.cxi"]
    status, doc = run_audit(str(reports / project.first / EXP / "infer"))
    assert status == 0, rows(doc, "finding")
    assert doc["stats"]["steps"] == 1
    info = {r["item"]: r["message"] for r in rows(doc, "info")}
    assert f"{project.second}/tiny/infer" in info["results/tiny/infer/reconstruction.h5"]


def test_a_missing_path_is_a_usage_error(tmp_path):
    out = subprocess.run([sys.executable, "-m", "ptycho_torch.audit", str(tmp_path / "nope")],
                         env=clean_env(), capture_output=True, text=True)
    assert out.returncode == 2 and "no such directory" in out.stderr


# ---------------------------------------------------------------- mutations

Mutation = Callable[[Path, Project], None]


def at(template: str, root: Path, p: Project) -> Path:
    return root / template.format(first=p.first, second=p.second)


def delete(path: str) -> Mutation:
    return lambda root, p: at(path, root, p).unlink()


def truncate(path: str) -> Mutation:
    def mutate(root: Path, p: Project) -> None:
        f = at(path, root, p)
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return mutate


def append_byte(path: str) -> Mutation:
    def mutate(root: Path, p: Project) -> None:
        with open(at(path, root, p), "ab") as f:
            f.write(b"\n")
    return mutate


def replace(path: str) -> Mutation:
    """Replace the file by another of the same size (one bit differs), via a rename."""
    def mutate(root: Path, p: Project) -> None:
        f = at(path, root, p)
        data = f.read_bytes()
        other = f.with_name(f.name + ".new")
        other.write_bytes(bytes([data[0] ^ 1]) + data[1:])
        os.replace(other, f)
    return mutate


def add_file(path: str) -> Mutation:
    return lambda root, p: at(path, root, p).write_text("not made by any step\n")


def edit_manifest(path: str) -> Mutation:
    def mutate(root: Path, p: Project) -> None:
        f = at(path, root, p)
        m = json.loads(f.read_text())
        m["numbers"]["epochs"] = 999
        f.write_text(json.dumps(m, indent=2, sort_keys=True) + "\n")
    return mutate


def forge_manifest(step_dir: str) -> Mutation:
    """Alter config.json and rewrite the manifest to match, its content hash included."""
    def mutate(root: Path, p: Project) -> None:
        d = at(step_dir, root, p)
        (d / "config.json").write_text((d / "config.json").read_text() + " ")
        m = json.loads((d / MANIFEST).read_text())
        m["files"]["config.json"] = {"sha256": sha256_file(d / "config.json"),
                                     "size": (d / "config.json").stat().st_size}
        m[SELF_HASH] = manifest_digest(m)
        (d / MANIFEST).write_text(json.dumps(m, indent=2, sort_keys=True) + "\n")
    return mutate


def restore_first_metrics(root: Path, p: Project) -> None:
    target = root / f"results/{EXP}/infer/metrics.json"
    assert target.read_bytes() != p.first_metrics, "the two runs made the same metrics.json"
    target.write_bytes(p.first_metrics)


def remove_dir(path: str) -> Mutation:
    return lambda root, p: shutil.rmtree(at(path, root, p))


def copy_run_as(name: str) -> Mutation:
    return lambda root, p: shutil.copytree(root / "reports" / p.second, root / "reports" / name)


def make_dir(path: str) -> Mutation:
    return lambda root, p: at(path, root, p).mkdir()


R1, R2 = "reports/{first}/tiny", "reports/{second}/tiny"
MUTATIONS = {  # id: (mutation, the row's item, words of its message)
    "delete-evidence": (delete(f"{R1}/train/loss.png"), f"{R1}/train", "loss.png: missing"),
    "truncate-log": (truncate(f"{R1}/simulate/simulate.log"), f"{R1}/simulate",
                     "simulate.log: truncated"),
    "append-byte-evidence": (append_byte(f"{R2}/infer/metrics.json"), f"{R2}/infer",
                             "metrics.json: grew"),
    "replace-summary": (replace(f"{R1}/validate/summary.md"), f"{R1}/validate",
                        "summary.md: modified"),
    "stray-in-step": (add_file(f"{R2}/report/notes.txt"), f"{R2}/report", "notes.txt: stray"),
    "edit-manifest": (edit_manifest(f"{R1}/train/{MANIFEST}"), f"{R1}/train",
                      "manifest.json: edited"),
    "forge-manifest": (forge_manifest(f"{R1}/simulate"), f"{R1}/simulate",
                       "manifest.json differs from the one the run index recorded"),
    "no-manifest": (delete(f"{R1}/validate/{MANIFEST}"), f"{R1}/validate",
                    "incomplete: no manifest.json"),
    "corrupt-manifest": (truncate(f"{R2}/infer/{MANIFEST}"), f"{R2}/infer",
                         "manifest.json: not valid JSON"),
    "delete-product": (delete("results/tiny/simulate/test.cxi"), "results/tiny/simulate/test.cxi",
                       "missing: made by {first}/tiny/simulate"),
    "truncate-product": (truncate("results/tiny/train/model.pt"), "results/tiny/train/model.pt",
                         "truncated"),
    "append-byte-product": (append_byte("results/tiny/infer/reconstruction.h5"),
                            "results/tiny/infer/reconstruction.h5", "grew"),
    "replace-product": (replace("results/tiny/validate/payload.json"),
                        "results/tiny/validate/payload.json", "modified"),
    "restore-older-product": (restore_first_metrics, "results/tiny/infer/metrics.json",
                              "matches what {first}/tiny/infer made"),
    "stray-product": (add_file("results/tiny/train/extra.pt"), "results/tiny/train/extra.pt",
                      "untraced"),
    "stray-in-run": (add_file("reports/{first}/notes.md"), "reports/{first}/notes.md",
                     "untraced"),
    "edit-run-index": (append_byte("reports/{second}/index.md"), "reports/{second}/index.md",
                       "grew"),
    "delete-step-dir": (remove_dir(f"{R1}/train"), f"{R1}/train",
                        "step directory missing: the run index lists it"),
    "malformed-run-id": (copy_run_as("2026-02-30T000000Z"), "reports/2026-02-30T000000Z",
                         "malformed run id"),
    "empty-run-dir": (make_dir("reports/2026-01-01T000000Z"), "reports/2026-01-01T000000Z",
                      "empty run directory"),
}


# Snakemake's own files: the second run's report sealed them (the first run's files of the
# steps it did not rerun, unchanged, and the second run's infer files)
LOGS, BENCH = "results/tiny/logs", "results/tiny/benchmarks"
SEALED = "sealed by {second}/tiny/report"
SNAKEMAKE_MUTATIONS = {
    "delete-train-log": (delete(f"{LOGS}/train.log"), f"{LOGS}/train.log", f"missing: {SEALED}"),
    "delete-infer-benchmark": (delete(f"{BENCH}/infer.tsv"), f"{BENCH}/infer.tsv",
                               f"missing: {SEALED}"),
    "delete-validate-log": (delete(f"{LOGS}/validate.log"), f"{LOGS}/validate.log",
                            f"missing: {SEALED}"),
    "truncate-validate-benchmark": (truncate(f"{BENCH}/validate.tsv"), f"{BENCH}/validate.tsv",
                                    "truncated"),
    "truncate-simulate-log": (truncate(f"{LOGS}/simulate.log"), f"{LOGS}/simulate.log",
                              "truncated"),
    "append-infer-log": (append_byte(f"{LOGS}/infer.log"), f"{LOGS}/infer.log", "grew"),
    "append-simulate-benchmark": (append_byte(f"{BENCH}/simulate.tsv"), f"{BENCH}/simulate.tsv",
                                  "grew"),
    "append-train-benchmark": (append_byte(f"{BENCH}/train.tsv"), f"{BENCH}/train.tsv", "grew"),
    "flip-train-benchmark": (replace(f"{BENCH}/train.tsv"), f"{BENCH}/train.tsv", "modified"),
    "flip-validate-log": (replace(f"{LOGS}/validate.log"), f"{LOGS}/validate.log", "modified"),
}
MUTATIONS.update(SNAKEMAKE_MUTATIONS)


@pytest.mark.slow
def test_snakemake_files_are_sealed_and_the_rest_said_not_covered(project, tmp_path):
    """Each step's log and benchmark are sealed by the report after it; the report's own
    two files (written while and after it runs) are listed as not covered, with the reason."""
    status, doc = run_audit(str(copy_tree(project, tmp_path) / "reports"))
    assert status == 0, rows(doc, "finding")
    said = {r["item"]: (r["level"], r["message"]) for r in doc["rows"]}
    for step in ("simulate", "validate", "train", "infer"):
        for name in (f"{LOGS}/{step}.log", f"{BENCH}/{step}.tsv"):
            assert said[name] == ("ok", f"sealed by {project.second}/tiny/report"), name
    for name in (f"{LOGS}/report.log", f"{BENCH}/report.tsv"):
        level, message = said[name]
        assert level == "info" and message.startswith("not covered: the report step's own")
    assert not [r for r in doc["rows"] if r["kind"] == "product" and r["level"] == "info"
                and "not covered" in r["message"] and "/report." not in r["item"]]


def test_a_sealed_file_rewritten_by_a_later_step_is_a_warning_not_a_finding():
    """A rule that ran again after the last report rewrote its log: the seal is stale, which
    the audit says (a warning) but does not call tampering."""
    seal = Record(("2026-01-01T000000Z", "e", "report"), "2026-01-01T00:10:00", "a", 1, True)
    ledger = Ledger(manifests={
        ("2026-01-02T000000Z", "e", "infer"): {"started_utc": "2026-01-02T00:00:00",
                                               "products": {"results/e/infer/metrics.json": {}}},
        ("2026-01-02T000000Z", "f", "infer"): {"started_utc": "2026-01-03T00:00:00",
                                               "products": {"results/f/infer/metrics.json": {}}}})
    assert audit.later_step("results/e/logs/infer.log", seal, ledger) == "2026-01-02T000000Z/e/infer"
    assert audit.later_step("results/g/logs/infer.log", seal, ledger) is None
    assert audit.snakemake_rule("results/e/benchmarks/train.tsv") == "train"
    assert audit.snakemake_rule("results/e/train/model.pt") is None


@pytest.mark.parametrize("name", MUTATIONS)
@pytest.mark.slow
def test_the_audit_names_each_damage(project, tmp_path, name):
    mutate, item, words = MUTATIONS[name]
    root = copy_tree(project, tmp_path)
    mutate(root, project)
    status, doc = run_audit(str(root / "reports"))
    item, words = (s.format(first=project.first, second=project.second) for s in (item, words))
    found = rows(doc, "finding")
    assert status == 1 and not doc["clean"]
    assert any(r["item"] == item and words in r["message"] for r in found), \
        f"no finding for {item!r} saying {words!r}; findings: {found}"


# ---------------------------------------------------------------- strict, failed steps, scale

FIXED_ENV = {"code": {"git_commit": "0" * 40, "dirty": False},
             "packages": {"python": "3", "torch": "2", "numpy": "2", "h5py": "3",
                          "snakemake": "9"}, "host": "test", "slurm_job_id": None}


def test_strict_makes_warnings_findings(tmp_path):
    bench = load_benchmark()
    reports = bench.make_tree(tmp_path, 5, 64, 64, env=FIXED_ENV)
    assert audit.audit([reports]).exit_status(strict=True) == 0
    failed = reports / "2026-06-01T000000Z" / "alpha" / "fit"
    failed.mkdir(parents=True)
    (failed / "summary.md").write_text("# fit: FAILED\n\nFAILED: see the log\n")
    (failed / "fit.log").write_text("Traceback ...\n")
    res = audit.audit([reports])
    assert res.count("finding") == 0 and res.count("warning") == 1
    assert res.exit_status(strict=False) == 0 and res.exit_status(strict=True) == 1
    dirty = tmp_path / "dirty"
    dirty.mkdir()
    dirty_env = {**FIXED_ENV, "code": {"git_commit": "1" * 40, "dirty": True}}
    res = audit.audit([bench.make_tree(dirty, 5, 64, 64, env=dirty_env)])
    assert res.count("warning") == 5 and res.exit_status(strict=True) == 1
    assert all("dirty" in r.message for r in res.rows if r.level == "warning")


@pytest.mark.slow
def test_a_thousand_step_reports(tmp_path):
    reports = load_benchmark().make_tree(tmp_path, 1000, 256, 256, env=FIXED_ENV)
    res = audit.audit([reports])
    assert res.steps == 1000 and res.count("finding") == 0 and res.count("warning") == 0
    victim = sorted(reports.glob("*/gamma/score/evidence.bin"))[7]
    with open(victim, "ab") as f:
        f.write(b"x")
    found = [r for r in audit.audit([reports]).rows if r.level == "finding"]
    assert len(found) == 1 and found[0].item == str(victim.parent.relative_to(tmp_path))
    assert found[0].message.startswith("evidence.bin: grew")


# ---------------------------------------------------------------- through Snakemake

@pytest.mark.slow
def test_snakemake_audit_target(project):
    before = run_dirs(project.workdir)
    out = run_snakemake(project.workdir, "audit", *project.args())
    assert out.returncode == 0, out.stdout
    assert jobs_run(out.stdout) == {"audit"} and "CLEAN" in out.stdout
    assert json.loads((project.workdir / "results/tiny/audit/audit.json").read_text())["clean"]
    assert "CLEAN" in (project.workdir / "results/tiny/logs/audit.log").read_text()
    assert run_dirs(project.workdir) == before
    again = run_snakemake(project.workdir, "--dry-run", *project.args())
    assert again.returncode == 0 and "Nothing to be done" in again.stdout, again.stdout


@pytest.mark.slow
def test_snakemake_audit_target_fails_on_a_finding_and_reruns_nothing(project, tmp_path):
    workdir = copy_tree(project, copy_workflow(tmp_path))
    shutil.copy2(project.workdir / "stitch.yaml", workdir / "stitch.yaml")
    truncate("results/tiny/train/model.pt")(workdir, project)
    out = run_snakemake(workdir, "audit", *project.args())
    assert out.returncode != 0
    assert jobs_run(out.stdout) == {"audit"}
    assert any("results/tiny/train/model.pt" in line and "FINDING" in line and "truncated" in line
               for line in out.stdout.splitlines()), out.stdout
    assert not json.loads((workdir / "results/tiny/audit/audit.json").read_text())["clean"]
    assert [p.name for p in run_dirs(workdir)] == [project.first, project.second]


@pytest.mark.slow
def test_snakemake_html_report_has_the_figures_and_captions(project):
    before = run_dirs(project.workdir)
    out = run_snakemake(project.workdir, *project.args(), "--report", "report.html")
    assert out.returncode == 0, out.stdout
    html = (project.workdir / "report.html").read_text()
    for text in ("loss.png", "reconstruction.png", "index.md", "Training loss per epoch",
                 "Amplitude and phase of the reconstructed test object"):
        assert text in html, text
    assert run_dirs(project.workdir) == before
    assert run_audit(str(project.workdir / "reports"))[0] == 0
