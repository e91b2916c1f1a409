"""Cluster submission through ``profiles/slurm``, against a real single-node SLURM.

The cluster is ``tests/slurm/local_slurm.sh`` (slurmctld + slurmd + munged, no accounting,
no GPUs). If one is already running (CI starts it in ``.ci/run``) the tests use it and leave
it running; otherwise they start one and stop it afterwards. Where SLURM cannot run (not
installed, not root, the daemons do not come up) the cluster tests are skipped with the
reason; with ``PTYCHO_REQUIRE_SLURM=1`` (set by ``.ci/run``) they fail instead.

One module-scoped run of the tiny experiment under SLURM serves several tests:

* it goes through ``snakemake --profile profiles/slurm`` with two command-line changes that
  this test cluster needs: ``--set-resources`` sizes ``train`` for a node without GPUs (the
  profile asks for a GPU, 8 CPUs and 32 GB, which no job here can get), and status polling
  every 2 s instead of 20 s;
* the test's copy of the workflow runs every step's interpreter through a wrapper that makes
  the first ``train`` job fail, so the profile's ``retries`` must resubmit it;
* a plain local run of the same config, started alongside, gives the reference products.

The dry-run test needs no cluster: it hides the SLURM commands from PATH.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from conftest import REPO, TINY, clean_env, copy_workflow, jobs_run
from ptycho_torch.evidence import RUN_ID_PATTERN

HARNESS = REPO / "tests" / "slurm" / "local_slurm.sh"
PROFILE = REPO / "profiles" / "slurm" / "config.yaml"
REQUIRE_SLURM = os.environ.get("PTYCHO_REQUIRE_SLURM") == "1"
STEPS = ("simulate", "validate", "train", "infer", "report")
EXP = "tiny"


def declared_local_steps() -> set[str]:
    """Steps the workflow runs in the main Snakemake process, not as SLURM jobs: those named
    in the Snakefile's `localrules:` or marked `localrule: True` in their rule file."""
    listed = re.search(r"^localrules:(.*)$", (REPO / "Snakefile").read_text(), re.MULTILINE)
    names = {n.strip() for n in listed.group(1).split(",")} if listed else set()
    return {s for s in STEPS if s in names or re.search(
        r"^\s*localrule:\s*True", (REPO / "workflow" / "rules" / f"{s}.smk").read_text(),
        re.MULTILINE)}


MAIN_PROCESS_STEPS = declared_local_steps()  # none today: `localrules: all` only
SLURM_STEPS = set(STEPS) - MAIN_PROCESS_STEPS
FAILS_ONCE = "train"  # the step whose first SLURM job fails on purpose

THREADS = 2  # execution.threads of both runs: the timed steps' `threads:`, so CPUs per job vary
# What the test cluster needs on top of the profile (a command-line --set-resources or
# --set-threads replaces the profile's whole entry: these are train's complete resources and
# threads here; THREADS threads, like the local run whose products must match byte for byte).
TEST_CLUSTER_ARGS = (
    "--set-resources", "train:gpu=0", f"train:cpus_per_task={THREADS}", "train:mem_mb=2000",
    "train:runtime=10", "--set-threads", f"train={THREADS}",
    "--slurm-init-seconds-before-status-checks", "2", "--seconds-between-status-checks", "2",
)
RUN_TIMEOUT_S = 300  # a hang (e.g. sacct without accounting) must fail, not block CI

SUBMITTED = re.compile(r"^Job (\d+) has been submitted with SLURM jobid (\d+) "
                       r"\(log: .*/rule_(\w+)/\d+\.log\)", re.MULTILINE)


# ---------------------------------------------------------------- the cluster

def harness(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(HARNESS), *args], capture_output=True, text=True,
                          timeout=timeout)


def slurm_not_installed() -> str | None:
    """Why this machine has no SLURM to run the local cluster with, or None."""
    sbin = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    missing = [b for b in ("sbatch", "squeue", "scontrol", "srun")
               if shutil.which(b) is None]
    missing += [b for b in ("slurmctld", "slurmd", "munged") if shutil.which(b, path=sbin) is None]
    if missing:
        return (f"SLURM is not installed ({', '.join(missing)} not found); "
                f"run: sudo {HARNESS.relative_to(REPO)} install")
    return None


@pytest.fixture(scope="module")
def slurm_env():
    """The environment for Snakemake with SLURM_CONF of a running local cluster: the one
    already running (CI starts it), else one started here and stopped afterwards."""
    reason, started_here = slurm_not_installed(), False
    if reason is None and harness("status", timeout=30).returncode != 0:
        if os.geteuid() != 0:
            reason = (f"no local SLURM cluster is running, and starting one needs root: "
                      f"sudo {HARNESS.relative_to(REPO)} start")
        else:
            start = harness("start")
            started_here = True
            if start.returncode != 0:
                said = [line for line in start.stderr.splitlines()
                        if line.startswith("[local_slurm")]
                reason = f"{HARNESS.relative_to(REPO)} start failed:\n" + "\n".join(said[-3:])
    if reason is not None:
        if started_here:
            harness("stop")
        if REQUIRE_SLURM:
            pytest.fail(f"PTYCHO_REQUIRE_SLURM=1 but {reason}", pytrace=False)
        pytest.skip(reason)
    conf = harness("env", timeout=30).stdout.strip().removeprefix("export SLURM_CONF=")
    yield {**clean_env(), "SLURM_CONF": conf}
    if started_here:
        stop = harness("stop")
        assert stop.returncode == 0, stop.stderr


def squeue(env: dict[str, str]) -> dict[str, dict[str, str]]:
    """Every job slurmctld still knows (finished ones stay MinJobAge = 300 s), by job id."""
    out = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%i|%j|%k|%T"], env=env,
                         capture_output=True, text=True, timeout=30, check=True).stdout
    rows = (line.split("|") for line in out.splitlines() if line.strip())
    return {r[0]: {"name": r[1], "comment": r[2], "state": r[3]} for r in rows}


def scontrol_cpus_per_task(job: str, env: dict[str, str]) -> int:
    """The CPUs per task slurmctld granted job ``job`` (``scontrol show job``: CPUs/Task)."""
    out = subprocess.run(["scontrol", "show", "job", "-o", job], env=env, capture_output=True,
                         text=True, timeout=30, check=True).stdout
    return int(re.search(r"\bCPUs/Task=(\d+)", out).group(1))


# ---------------------------------------------------------------- one run under SLURM

def fail_first_train_job(workdir: Path) -> Path:
    """Make the copy's first `train` job fail (test only; production code is untouched).

    Every rule's command starts with the interpreter ``{PYTHON:q}``, a global of the
    workflow that is looked up when a job runs (in the SLURM job too, which re-reads the
    Snakefile). The copy's Snakefile points it at a wrapper that exits 3 the first time it
    is asked for ``-m ptycho_torch.train`` and otherwise runs the real interpreter.
    Returns the marker file the failure leaves.
    """
    marker = workdir / f"{FAILS_ONCE}.failed-once"
    wrapper = workdir / "python-fails-once.sh"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'if [ "$2" = ptycho_torch.{FAILS_ONCE} ] && [ ! -e "{marker}" ]; then\n'
        f'    touch "{marker}"; echo "injected failure: first attempt of {FAILS_ONCE}" >&2\n'
        "    exit 3\n"
        "fi\n"
        f'exec "{sys.executable}" "$@"\n')
    wrapper.chmod(0o755)
    with (workdir / "Snakefile").open("a") as snakefile:
        snakefile.write(f"\n\n# tests/test_slurm.py: the first {FAILS_ONCE} job fails\n"
                        f"PYTHON = {str(wrapper)!r}\n")
    return marker


@dataclass(frozen=True)
class ClusterRun:
    workdir: Path
    out: subprocess.CompletedProcess
    local: Path  # the same config run with profiles/local
    jobs: dict[str, dict[str, str]]  # squeue right after the run
    cpus_per_task: dict[str, int]  # scontrol's CPUs/Task of each job, right after the run
    submitted: list[tuple[str, str]]  # (rule, SLURM job id) in submission order
    marker: Path

    def manifest(self, step: str) -> dict:
        (step_dir,) = (p for p in self.workdir.glob(f"reports/*/{EXP}/{step}")
                       if RUN_ID_PATTERN.match(p.parent.parent.name))  # not reports/latest
        return json.loads((step_dir / "manifest.json").read_text())

    def slurm_ids(self, rule: str) -> list[str]:
        return [job for r, job in self.submitted if r == rule]


@pytest.fixture(scope="module")
def cluster_run(slurm_env, tmp_path_factory) -> ClusterRun:
    workdir = copy_workflow(tmp_path_factory.mktemp("slurm"))
    local = copy_workflow(tmp_path_factory.mktemp("local"))
    for d in (workdir, local):  # no wall-clock limit on training: identical epochs in both runs
        (d / "no-time-limit.yaml").write_text(
            f"training:\n  max_minutes: 0\nexecution:\n  threads: {THREADS}\n")
    configs = ("--configfile", TINY, "no-time-limit.yaml")
    marker = fail_first_train_job(workdir)
    # the reference run shares the 2 cores with the cluster run, which mostly waits
    reference = subprocess.Popen(
        ["timeout", "-k", "10", str(RUN_TIMEOUT_S), sys.executable, "-m", "snakemake",
         "--profile", "profiles/local", *configs],
        cwd=local, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out = subprocess.run(
            ["timeout", "-k", "10", str(RUN_TIMEOUT_S), sys.executable, "-m", "snakemake",
             "--profile", "profiles/slurm", *configs, *TEST_CLUSTER_ARGS],
            cwd=workdir, env=slurm_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, timeout=RUN_TIMEOUT_S + 30)
        jobs = squeue(slurm_env)
        cpus = {job: scontrol_cpus_per_task(job, slurm_env) for job in jobs}
    finally:
        reference_out = reference.communicate(timeout=RUN_TIMEOUT_S + 30)[0]
    assert reference.returncode == 0, reference_out
    assert out.returncode == 0, f"profiles/slurm run: rc {out.returncode}\n{out.stdout}"
    submitted = [(rule, job) for _, job, rule in SUBMITTED.findall(out.stdout)]
    return ClusterRun(workdir, out, local, jobs, cpus, submitted, marker)


@pytest.mark.slow
def test_every_cluster_step_ran_as_its_own_slurm_job(cluster_run):
    run = cluster_run
    assert {"simulate", "train", "infer"} <= SLURM_STEPS  # the heavy steps never run locally
    assert {rule for rule, _ in run.submitted} == SLURM_STEPS, run.out.stdout
    (slurm_run_id,) = set(re.findall(r"^SLURM run ID: (\S+)", run.out.stdout, re.MULTILINE))
    recorded = {}
    for step in sorted(SLURM_STEPS):
        job = run.manifest(step)["slurm_job_id"]
        assert job == run.slurm_ids(step)[-1], (step, job, run.submitted)  # the plugin's log
        assert run.jobs[job] == {"name": slurm_run_id, "comment": f"rule_{step}",
                                 "state": "COMPLETED"}, (step, job)  # slurmctld (squeue)
        recorded[step] = job
    assert len(set(recorded.values())) == len(recorded), recorded
    for step in MAIN_PROCESS_STEPS:
        assert f"localrule {step}:" in run.out.stdout
        assert run.manifest(step)["slurm_job_id"] is None


def job_threads(output: str) -> dict[str, int]:
    """``threads:`` of each rule's job block ("rule X:" ...) in Snakemake's output; a block
    without that line has one thread (Snakemake prints it only above 1)."""
    found = {}
    for rule, block in re.findall(r"^(?:local)?rule (\w+):\n(.*?)(?=^\S|\Z)", output,
                                  re.MULTILINE | re.DOTALL):
        line = re.search(r"^\s+threads: (\d+)$", block, re.MULTILINE)
        found[rule] = int(line.group(1)) if line else 1
    return found


@pytest.mark.slow
def test_each_job_asks_slurm_for_as_many_cpus_as_its_rule_has_threads(cluster_run):
    """--cpus-per-task = the rule's threads for every job (train: threads x processes, 1
    process here), as slurmctld granted it; the timed steps have THREADS, the others 1, so
    one CPU default for all (what the profile asked for before) fails here."""
    threads = job_threads(cluster_run.out.stdout)
    assert threads["infer"] == threads["train"] == THREADS and threads["simulate"] == 1, threads
    granted = {(rule, job): cluster_run.cpus_per_task[job] for rule, job in cluster_run.submitted}
    assert granted == {(rule, job): threads[rule] for rule, job in cluster_run.submitted}


@pytest.mark.slow
def test_all_steps_share_one_run_id(cluster_run):
    runs = [p for p in (cluster_run.workdir / "reports").iterdir() if RUN_ID_PATTERN.match(p.name)]
    assert len(runs) == 1, runs
    (run_dir,) = runs
    assert sorted(p.name for p in (run_dir / EXP).iterdir()) == sorted(STEPS)
    for step in STEPS:
        manifest = cluster_run.manifest(step)
        assert (manifest["run_id"], manifest["status"]) == (run_dir.name, "ok"), step
    index = json.loads((run_dir / "index.json").read_text())
    assert {p["run_id"] for p in index["products"]} == {run_dir.name}
    assert f"reports/{run_dir.name}/ (this run)" in cluster_run.out.stdout  # the main process's


def history_without_wall_time(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


@pytest.mark.slow
def test_products_equal_those_of_a_local_run(cluster_run):
    products = sorted(p.relative_to(cluster_run.workdir)
                      for step in ("simulate", "validate", "train", "infer")
                      for p in (cluster_run.workdir / "results" / EXP / step).iterdir())
    names = {p.name for p in products}
    assert {"train.cxi", "test.cxi", "payload.json", "model.pt", "history.csv",
            "reconstruction.h5", "metrics.json"} <= names
    local = sorted(p.relative_to(cluster_run.local)
                   for step in ("simulate", "validate", "train", "infer")
                   for p in (cluster_run.local / "results" / EXP / step).iterdir())
    assert products == local
    for path in products:
        mine, theirs = cluster_run.workdir / path, cluster_run.local / path
        if path.name == "history.csv":  # its `seconds` column is wall time
            assert history_without_wall_time(mine) == history_without_wall_time(theirs)
        else:
            assert mine.read_bytes() == theirs.read_bytes(), path
    metrics = f"results/{EXP}/infer/metrics.json"
    assert (json.loads((cluster_run.workdir / metrics).read_text())
            == json.loads((cluster_run.local / metrics).read_text()))


@pytest.mark.slow
def test_a_job_that_fails_once_is_retried_and_the_pipeline_completes(cluster_run):
    run = cluster_run
    assert run.marker.is_file()  # the injected failure happened
    first, second = run.slurm_ids(FAILS_ONCE)  # submitted twice, nothing else was
    assert all(len(run.slurm_ids(s)) == 1 for s in SLURM_STEPS - {FAILS_ONCE}), run.submitted
    assert run.jobs[first]["state"] == "FAILED" and run.jobs[second]["state"] == "COMPLETED"
    assert run.manifest(FAILS_ONCE)["slurm_job_id"] == second
    assert "injected failure" in run.out.stdout  # show-failed-logs printed the step log
    assert "Trying to restart job" in run.out.stdout
    assert jobs_run(run.out.stdout) == {*STEPS, "all"}
    assert (run.workdir / f"results/{EXP}/report/index.md").is_file()


# ---------------------------------------------------------------- without a cluster

def profile() -> dict:
    return yaml.safe_load(PROFILE.read_text())


def test_profile_settings():
    p = profile()
    assert p["executor"] == "slurm"
    assert p["retries"] >= 1 and p["rerun-incomplete"] is True
    assert p["slurm-status-command"] == "squeue"  # sacct hangs where accounting is off
    train = p["set-resources"]["train"]
    assert train["gpu"] == 1 and {"cpus_per_task", "mem_mb", "runtime"} <= set(train)
    for rule in ("train", "baseline_train"):  # each process's threads use the CPUs asked for
        asked = p["set-resources"][rule]
        assert p["set-threads"][rule] * asked["processes"] == asked["cpus_per_task"], rule


def dry_run_resources(output: str) -> dict[str, dict[str, str]]:
    """`resources:` of each job block ("rule X:" / "localrule X:") of a dry run, by rule."""
    found = {}
    for rule, block in re.findall(r"^(?:local)?rule (\w+):\n(.*?)(?=^\S|\Z)", output,
                                  re.MULTILINE | re.DOTALL):
        line = re.search(r"^\s+resources: (.*)$", block, re.MULTILINE)
        found[rule] = dict(kv.split("=", 1) for kv in line.group(1).split(", "))
    return found


def dry_run_without_slurm(tmp_path: Path, *targets: str) -> tuple[Path, str]:
    """(workflow copy, output) of ``snakemake --profile profiles/slurm --dry-run TARGETS`` on
    a PATH with no SLURM commands: what each job would ask for, without a cluster."""
    (tmp_path / "wf").mkdir()
    workdir = copy_workflow(tmp_path / "wf")
    bin_dir = tmp_path / "bin"  # a PATH with a shell and `which`, but no SLURM commands
    bin_dir.mkdir()
    for tool in ("sh", "bash", "which", "env"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    env = {k: v for k, v in clean_env().items() if not k.startswith("SLURM")}
    env["PATH"] = str(bin_dir)
    out = subprocess.run(
        [shutil.which("timeout"), "-k", "5", "120", sys.executable, "-m", "snakemake",
         "--profile", "profiles/slurm", "--dry-run", *targets,
         "--cores", "64"],  # a dry run caps threads at --cores (1); a cluster job at its node's
        cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert out.returncode == 0, out.stdout
    assert not (workdir / "results").exists() and not (workdir / "reports").exists()
    return workdir, out.stdout


def asked(rule: str) -> dict[str, str]:
    """The resources the profile gives ``rule``, as a dry run prints them (attempt 1)."""
    p = profile()
    given = {**{k: v for k, v in p["default-resources"].items() if not k.startswith("slurm_")},
             **p["set-resources"].get(rule, {})}
    return {k: str(eval(str(v), {"attempt": 1})) for k, v in given.items()}  # "120 * attempt"


@pytest.mark.slow
def test_dry_run_without_slurm_shows_what_each_job_requests(tmp_path):
    _, out = dry_run_without_slurm(tmp_path)
    assert jobs_run(out) == {*STEPS, "all"}
    resources = dry_run_resources(out)
    for step in SLURM_STEPS:
        assert {k: resources[step][k] for k in asked(step)} == asked(step), step
        assert ("gpu" in resources[step]) == (step == "train"), step
    threads = profile()["set-threads"]["train"]
    block = re.search(r"^rule train:\n(.*?)^\S", out, re.MULTILINE | re.DOTALL).group(1)
    assert re.search(rf"^\s+threads: {threads}$", block, re.MULTILINE), block
    assert f"--threads {threads} " in out  # what the step's torch gets


@pytest.mark.slow
def test_the_solver_steps_ask_for_their_own_memory_and_time(tmp_path):
    _, out = dry_run_without_slurm(tmp_path, "compare")
    resources = dry_run_resources(out)
    defaults = asked("infer")
    for rule in ("iterative", "hybrid"):
        assert {k: resources[rule][k] for k in asked(rule)} == asked(rule), rule
        assert asked(rule)["mem_mb"] != defaults["mem_mb"], rule
        assert asked(rule)["runtime"] != defaults["runtime"], rule


class _Resources(dict):
    __getattr__ = dict.__getitem__


class _Job:
    """Just enough of a Snakemake job for the plugin's sbatch-argument functions."""

    def __init__(self, resources: dict):
        self.resources, self.threads = _Resources(resources), 1


def test_train_request_becomes_sbatch_gpus_cpus_mem_and_time():
    """How snakemake-executor-plugin-slurm maps the profile's train resources onto sbatch
    (the documented mapping, pinned: gpu -> --gpus, so a cluster needing --gres sees it)."""
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    train = {k: eval(str(v), {"attempt": 1}) if isinstance(v, str) else v
             for k, v in profile()["set-resources"]["train"].items()}
    job = _Job(train)
    call = get_submit_command(job, {"run_uuid": "u", "slurm_logfile": "l", "comment_str": "c",
                                    "account": "", "partition": "", "workdir": "w"})
    call += set_gres_string(job)
    assert f"--gpus={train['gpu']}" in call
    assert f"--cpus-per-task={train['cpus_per_task']}" in call
    assert f"--mem {train['mem_mb']}" in call and f"-t {train['runtime']}" in call
    assert "--gpus" not in set_gres_string(_Job({**train, "gpu": 0}))  # the test cluster's
