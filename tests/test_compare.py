"""The method comparison: the table builder (numbers straight from the metrics files and the
step manifests), the compare CLI, and the workflow's `compare` target on the tiny experiment
(the baseline rules in the DAG; one end-to-end run: comparison.json, the table in the run
index, the compare step's evidence)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from conftest import TINY, copy_workflow, jobs_run, run_snakemake, run_step
from ptycho_torch import compare, comparison, figures, ptychi_solver
from ptycho_torch.formatting import number
from ptycho_torch.evidence import RUN_ID_PATTERN, StepReport, load_manifest, sha256_file

EXP = "tiny"
QUALITY = [f"{p}.{k}" for p in comparison.PARTS for k in comparison.METRICS]
BASELINE_RULES = {"baseline_train", "baseline_infer", "iterative", "hybrid", "comparison"}


# ---------------------------------------------------------------- the table builder

def metrics(amp: tuple[float, float, float], phase: tuple[float, float, float],
            n: int = 144) -> dict:
    """A metrics.json as the infer step writes it (the keys the comparison reads)."""
    def part(v):
        return {"mae": 0.1, "mse": 0.01, "psnr": v[0], "ssim": v[1], "frc50": v[2], "frc_1_7": 0.2}
    return {"amplitude": part(amp), "phase": part(phase), "alignment": {"global_phase": True},
            "n_patterns": n, "region": {"rows": [8, 53], "cols": [9, 53]}}


def write_step(run: str, exp: str, step: str, products: dict[str, str | bytes],
               numbers: dict, data: Path) -> None:
    """Products and a real manifest of one step (in the current directory)."""
    paths = []
    for name, content in products.items():
        path = Path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        paths.append(path)
    rep_dir = Path("reports", run, exp, step)
    rep_dir.mkdir(parents=True)
    rep = StepReport(rep_dir, step, paths, "0" * 64, 7, inputs=[data],
                     environment={"code": {}, "packages": {}, "host": "h", "slurm_job_id": None})
    rep.record(numbers)
    rep.finish(ok=True)


@pytest.fixture
def two_methods(tmp_path, monkeypatch):
    """Metrics, models and manifests of two methods: A wins amplitude, B wins phase; A trains
    faster (1 s vs 3 s), B reconstructs faster (0.2 s vs 0.5 s)."""
    monkeypatch.chdir(tmp_path)
    train, test = Path("train.cxi"), Path("test.cxi")
    train.write_bytes(b"train data")
    test.write_bytes(b"test data")
    run = "2026-01-01T000000Z"
    for name, amp, phase, t_train, t_rec in (("a", (20.0, 0.5, 0.2), (10.0, 0.3, 0.1), 1.0, 0.5),
                                             ("b", (18.0, 0.4, 0.1), (12.0, 0.6, 0.3), 3.0, 0.2)):
        write_step(run, name, "train", {f"results/{name}/model.pt": f"weights {name}"},
                   {"train_seconds": t_train, "patterns": 64, "epochs": 2, "mode": name}, train)
        write_step(run, name, "infer",
                   {f"results/{name}/metrics.json": json.dumps(metrics(amp, phase))},
                   {"reconstruction_seconds": t_rec, "network_seconds": t_rec / 2}, test)
    return tmp_path


def built(names_files: list[tuple[str, str]]) -> dict:
    rows = [compare.method_entry(name, Path(f"results/{src}/metrics.json"),
                                 Path(f"results/{src}/model.pt"), Path("reports"))
            for name, src in names_files]
    return comparison.build_comparison(rows, EXP)


def test_numbers_come_from_the_metrics_files_and_the_step_manifests(two_methods):
    c = built([("a", "a"), ("b", "b")])
    a, b = c["methods"]
    assert a["amplitude"] == {"psnr": 20.0, "ssim": 0.5, "frc50": 0.2}
    assert b["phase"] == {"psnr": 12.0, "ssim": 0.6, "frc50": 0.3}
    assert (a["training_seconds"], a["reconstruction_seconds"]) == (1.0, 0.5)
    assert (b["training_seconds"], b["reconstruction_seconds"]) == (3.0, 0.2)
    assert a["training"]["patterns"] == 64 and a["training"]["epochs"] == 2
    assert a["evidence"]["training"] == "reports/2026-01-01T000000Z/a/train/manifest.json"
    assert {q: c["winners"][q] for q in QUALITY} == {
        **{f"amplitude.{k}": ["a"] for k in comparison.METRICS},
        **{f"phase.{k}": ["b"] for k in comparison.METRICS}}
    assert c["winners"]["training_seconds"] == ["a"]
    assert c["winners"]["reconstruction_seconds"] == ["b"]
    assert c["not_like_for_like"] == []
    assert c["verdict"].startswith("a better on 3 of 6 quality metrics (amplitude PSNR/SSIM/FRC50)")
    assert "training faster with a (1 s vs b 3 s)" in c["verdict"]
    assert "reconstruction faster with b (0.2 s vs a 0.5 s)" in c["verdict"]
    table = "\n".join(comparison.table_lines(c))
    row = ("| a | a, 64 patterns x 2 epochs | **20** | **0.5** | **0.2** | 10 | 0.3 | 0.1 "
           "| n/a | n/a | n/a | **1** | 0.5 |")  # no quality record: no R-factor
    assert row in table


def with_quality(m: dict, r: float, floor: float, nm: float | None) -> dict:
    """``m`` with a ``quality`` record as quality.assess_reconstruction writes it."""
    halves = {"skipped": "off"} if nm is None else {"resolution_half_bit_nm": nm}
    return {**m, "quality": {"data_consistency": {"r_factor": r, "r_factor_poisson_expected": floor,
                                                  "r_factor_over_noise": r / floor},
                             "half_data_frc": halves}}


def test_with_ground_truth_the_r_factor_columns_are_added(two_methods):
    """Ground truth: the verdict and winners stay those of PSNR/SSIM/FRC50; the R-factor
    columns and the ranking without the truth are added (b: lower R / floor; a: finer FRC)."""
    for name, r, nm in (("a", 0.04, 600.0), ("b", 0.03, 900.0)):
        f = Path(f"results/{name}/metrics.json")
        f.write_text(json.dumps(with_quality(json.loads(f.read_text()), r, 0.02, nm)))
    c = built([("a", "a"), ("b", "b")])
    assert c["ground_truth"] is True
    assert c["verdict"].startswith("a better on 3 of 6 quality metrics (amplitude PSNR/SSIM/FRC50)")
    assert c["winners"]["quality.r_factor_over_noise"] == ["b"]
    assert c["winners"]["quality.half_frc_resolution_nm"] == ["a"]
    assert ("without the ground truth, by R-factor / its noise floor, lower is better: b 1.5 < "
            "a 2") in c["verdict"]
    table = "\n".join(comparison.table_lines(c))
    assert "| R-factor | R / noise floor | half-data FRC resolution (nm) |" in table
    assert "| 0.04 | 2 | **600** |" in table and "| 0.03 | **1.5** | 900 |" in table


def test_swapping_the_metrics_files_flips_the_verdict(two_methods):
    before = built([("pinn", "a"), ("supervised", "b")])
    a, b = Path("results/a/metrics.json"), Path("results/b/metrics.json")
    a_text, b_text = a.read_text(), b.read_text()
    a.write_text(b_text)
    b.write_text(a_text)
    after = built([("pinn", "a"), ("supervised", "b")])
    flip = {"pinn": "supervised", "supervised": "pinn"}
    for q in QUALITY:
        assert after["winners"][q] == [flip[n] for n in before["winners"][q]], q
    assert before["verdict"].startswith("pinn better on 3 of 6 quality metrics (amplitude "
                                        "PSNR/SSIM/FRC50); supervised on 3 (phase PSNR/SSIM/FRC50)")
    assert after["verdict"].startswith("pinn better on 3 of 6 quality metrics (phase PSNR/SSIM/"
                                       "FRC50); supervised on 3 (amplitude PSNR/SSIM/FRC50)")
    # a cost belongs to the exact file its step made: no manifest made the swapped files
    assert [m["reconstruction_seconds"] for m in after["methods"]] == [None, None]


def test_unknown_cost_ties_and_unequal_training_are_stated(two_methods):
    Path("results/c").mkdir()
    shutil.copy("results/a/metrics.json", "results/c/metrics.json")  # no manifest made this copy
    rows = [compare.method_entry("a", Path("results/a/metrics.json"), Path("results/a/model.pt"),
                                 Path("reports")),
            compare.method_entry("c", Path("results/c/metrics.json"), None, Path("reports"))]
    c = comparison.build_comparison(rows, EXP)
    assert rows[1]["reconstruction_seconds"] is None and rows[1]["training"] is None
    assert all(c["winners"][q] == ["a", "c"] for q in QUALITY)  # identical numbers: ties
    assert "tied on amplitude PSNR/SSIM/FRC50, phase PSNR/SSIM/FRC50" in c["verdict"]
    assert "n/a" in "\n".join(comparison.table_lines(c))
    b = compare.method_entry("b", Path("results/b/metrics.json"), Path("results/b/model.pt"),
                             Path("reports"))
    b["training"]["epochs"] = 5
    c = comparison.build_comparison([rows[0], b], EXP)
    assert c["not_like_for_like"] == ["different epochs (a 2, b 5)"]
    assert "NOT like for like: different epochs" in c["verdict"]


def convergence(points: list[tuple[int, float, float, float]]) -> list[dict]:
    """A convergence curve as the iterative step writes it: (epoch, seconds, amplitude
    PSNR, phase PSNR) per checkpoint."""
    return [{"epoch": e, "seconds": t, "amplitude": {"psnr": a, "ssim": 0.5, "frc50": 0.1},
             "phase": {"psnr": p, "ssim": 0.5, "frc50": 0.1}} for e, t, a, p in points]


def test_time_to_reach_is_the_first_checkpoint_at_or_above_every_target():
    curve = convergence([(1, 0.5, 15.0, 8.0), (2, 1.0, 21.0, 11.0), (4, 2.0, 22.0, 12.5),
                         (8, 4.0, 25.0, 14.0)])
    # amplitude first reaches 20 dB at epoch 2, but phase 12 dB only at epoch 4
    assert comparison.time_to_reach(curve, {"amplitude": 20.0, "phase": 12.0}) == {
        "reached": True, "epoch": 4, "seconds": 2.0}
    assert comparison.time_to_reach(curve, {"amplitude": 20.0}) == {
        "reached": True, "epoch": 2, "seconds": 1.0}
    assert comparison.time_to_reach(curve, {"amplitude": 25.1, "phase": 1.0}) == {"reached": False}


def test_the_iterative_curve_is_matched_against_each_other_method(two_methods):
    """Method it (a convergence curve, no model) against a (amplitude 20 dB, phase 10 dB,
    0.5 s) and b (18 dB, 12 dB, 0.2 s)."""
    it = json.loads(Path("results/a/metrics.json").read_text())
    it["convergence"] = convergence([(1, 0.4, 17.0, 9.0), (2, 0.9, 19.0, 12.0),
                                     (3, 1.5, 20.0, 12.0)])
    Path("results/it").mkdir()
    Path("results/it/metrics.json").write_text(json.dumps(it))
    rows = [compare.method_entry(n, Path(f"results/{n}/metrics.json"),
                                 Path(f"results/{n}/model.pt") if n != "it" else None,
                                 Path("reports")) for n in ("a", "b", "it")]
    c = comparison.build_comparison(rows, EXP)
    got = {q["matches"]: q for q in c["time_to_quality"]}
    assert set(got) == {"a", "b"} and all(q["method"] == "it" for q in got.values())
    assert (got["a"]["epoch"], got["a"]["seconds"]) == (3, 1.5)  # 20 and 10 dB: epoch 3
    assert (got["b"]["epoch"], got["b"]["seconds"]) == (2, 0.9)  # 18 and 12 dB: epoch 2
    assert got["a"]["speedup_of_matched"] == pytest.approx(1.5 / 0.5)
    assert got["b"]["speedup_of_matched"] == pytest.approx(0.9 / 0.2)
    assert "it matched a's PSNR after 3 epochs, 1.5 s" in c["verdict"]
    text = "\n".join(comparison.table_lines(c))
    assert "| it | b's PSNR (amplitude 18 dB, phase 12 dB) | 2 | 0.9 | 0.2 | 4.5 |" in text


def test_final_quality_and_break_even_of_a_hybrid(two_methods):
    """it (no model; final 20 / 12 dB) and hy (a hybrid: a curve and a's model) against a
    (trained 1 s, 20 / 10 dB in 0.5 s) and b (trained 3 s, 18 / 12 dB in 0.2 s)."""
    it = json.loads(Path("results/a/metrics.json").read_text())
    it["convergence"] = convergence([(1, 0.4, 17.0, 9.0), (2, 0.9, 19.0, 12.0),
                                     (3, 1.5, 20.0, 12.0)])
    it["phase"] = {**it["phase"], "psnr": 12.0}  # its last checkpoint
    hy = {**it, "convergence": convergence([(1, 0.7, 19.6, 12.5)]),
          "amplitude": {**it["amplitude"], "psnr": 19.6}, "phase": {**it["phase"], "psnr": 12.5}}
    for name, m in (("it", it), ("hy", hy)):
        Path(f"results/{name}").mkdir()
        Path(f"results/{name}/metrics.json").write_text(json.dumps(m))
    models = {"a": "results/a/model.pt", "b": "results/b/model.pt", "it": None,
              "hy": "results/a/model.pt"}
    rows = [compare.method_entry(n, Path(f"results/{n}/metrics.json"),
                                 Path(f) if f else None, Path("reports"))
            for n, f in models.items()]
    c = comparison.build_comparison(rows, EXP)
    finals = {(f["method"], f["target_of"]): f for f in c["time_to_final_quality"]}
    assert finals["it", "it"]["psnr_db"] == {"amplitude": 19.5, "phase": 11.5}
    assert (finals["it", "it"]["epoch"], finals["it", "it"]["seconds"]) == (3, 1.5)
    assert (finals["hy", "it"]["epoch"], finals["hy", "it"]["seconds"]) == (1, 0.7)
    assert finals["it", "hy"]["seconds"] == 1.5 and finals["hy", "hy"]["seconds"] == 0.7
    assert {q["method"] for q in c["time_to_quality"]} == {"it"}  # hy is trained: no match rows
    even = {(b["method"], b["against"]): b for b in c["break_even"]}
    assert set(even) == {("a", "it"), ("b", "it"), ("hy", "it")}
    assert even["a", "it"]["scans"] == 1  # 1 s / (1.5 - 0.5 s)
    assert even["b", "it"]["scans"] == 5  # 3 s / (0.9 - 0.2 s) = 4.3
    assert even["hy", "it"]["scans"] == 2  # 1 s / (1.5 - 0.7 s) = 1.25
    assert even["hy", "it"]["quality"] == "it's final PSNR - 0.5 dB"
    assert "hy reached it's final PSNR - 0.5 dB in 0.7 s" in c["verdict"]
    text = "\n".join(comparison.table_lines(c))
    assert "| hy | it | it's final PSNR - 0.5 dB | 1 | 0.7 | 1.5 | 2 |" in text
    slow = comparison.break_even([{**rows[0], "reconstruction_seconds": 9.0}],
                              c["time_to_quality"], [])
    assert slow[0]["scans"] is None  # slower per scan than it: never pays off


def test_an_unavailable_method_keeps_its_row_and_the_rest_is_compared(two_methods):
    Path("results/it").mkdir()
    reason = "pty-chi not installed: run `make iterative`"
    Path("results/it/metrics.json").write_text(json.dumps({"unavailable": reason}))
    rows = [compare.method_entry("a", Path("results/a/metrics.json"), Path("results/a/model.pt"),
                                 Path("reports")),
            compare.method_entry("b", Path("results/b/metrics.json"), Path("results/b/model.pt"),
                                 Path("reports")),
            compare.method_entry("it", Path("results/it/metrics.json"), None, Path("reports"))]
    c = comparison.build_comparison(rows, EXP)
    assert c["unavailable"] == {"it": reason}
    assert all("it" not in c["winners"][q] for q in QUALITY)
    assert c["verdict"].startswith("a better on 3 of 6 quality metrics")
    assert "it not available (pty-chi not installed)" in c["verdict"]
    assert f"| it | not available: {reason} | n/a | n/a |" in "\n".join(comparison.table_lines(c))
    figures.comparison(Path("c.png"), c)
    assert Path("c.png").stat().st_size > 5000


# ---------------------------------------------------------------- the CLI

@pytest.mark.slow
def test_cli_help():
    out = run_step("compare", "--help", cwd=Path.cwd())
    assert out.returncode == 0 and "--method NAME" in out.stdout


@pytest.mark.slow
def test_cli_writes_products_and_evidence(two_methods):
    run_dir = Path("reports/2026-01-01T000100Z")
    out = run_step("compare", "--config-json", json.dumps({"experiment": EXP}),
                   "--method", "a", "results/a/metrics.json", "results/a/model.pt",
                   "--method", "b", "results/b/metrics.json", "results/b/model.pt",
                   "--out-dir", "results/compare", "--report-dir", str(run_dir / EXP / "compare"),
                   cwd=two_methods)
    assert out.returncode == 0, out.stderr
    c = json.loads(Path("results/compare/comparison.json").read_text())
    assert [m["name"] for m in c["methods"]] == ["a", "b"]
    assert "| method | training |" in Path("results/compare/comparison.md").read_text()
    assert Path("results/compare/comparison.png").stat().st_size > 5000
    manifest, problem = load_manifest(run_dir / EXP / "compare" / "manifest.json")
    assert problem is None and manifest["step"] == "compare"
    assert "reports/2026-01-01T000000Z/a/train/manifest.json" in manifest["inputs"]


@pytest.mark.slow
def test_cli_refuses_different_test_objects_and_writes_nothing(two_methods):
    Path("results/b/metrics.json").write_text(json.dumps(metrics((1, 1, 1), (1, 1, 1), n=99)))
    out = run_step("compare", "--method", "a", "results/a/metrics.json",
                   "--method", "b", "results/b/metrics.json", "--out-dir", "results/compare",
                   "--report-dir", "reports/2026-01-01T000100Z/tiny/compare", cwd=two_methods)
    assert out.returncode == 2
    assert "differ in their number of test patterns" in out.stderr
    assert not Path("results/compare/comparison.json").exists()
    assert not Path("reports/2026-01-01T000100Z").exists()


@pytest.mark.slow
def test_cli_refuses_a_metrics_file_without_the_metrics(two_methods):
    Path("results/b/metrics.json").write_text(json.dumps({"amplitude": {"psnr": 1.0}}))
    out = run_step("compare", "--method", "a", "results/a/metrics.json",
                   "--method", "b", "results/b/metrics.json", "--out-dir", "results/compare",
                   "--report-dir", "reports/2026-01-01T000100Z/tiny/compare", cwd=two_methods)
    assert out.returncode == 2 and "lacks amplitude.ssim, amplitude.frc50, phase.psnr" in out.stderr
    assert not Path("results/compare").exists()


@pytest.mark.slow
def test_cli_needs_two_methods(two_methods):
    out = run_step("compare", "--method", "a", "results/a/metrics.json", "--out-dir", "x",
                   "--report-dir", "reports/2026-01-01T000100Z/tiny/compare", cwd=two_methods)
    assert out.returncode == 2 and "at least two methods" in out.stderr


# ---------------------------------------------------------------- the workflow

@pytest.mark.slow
def test_dry_run_of_compare_lists_the_baseline_rules(workflow_copy):
    out = run_snakemake(workflow_copy, "compare", "--dry-run", "--configfile", TINY)
    assert out.returncode == 0, out.stdout
    assert jobs_run(out.stdout) == {"simulate", "validate", "train", "infer", *BASELINE_RULES,
                                    "report_with_comparison", "compare"}
    assert "--comparison results/tiny/compare/comparison.json" in out.stdout


@pytest.mark.slow
def test_compare_methods_leaves_out_the_baseline_and_refuses_a_list_without_the_pinn(
        workflow_copy):
    (workflow_copy / "two.yaml").write_text("compare_methods: [pinn, iterative]\n")
    out = run_snakemake(workflow_copy, "compare", "--dry-run", "--configfile", TINY, "two.yaml")
    assert out.returncode == 0, out.stdout
    assert jobs_run(out.stdout) == {"simulate", "validate", "train", "infer", "iterative",
                                    "comparison", "report_with_comparison", "compare"}
    assert "--method iterative results/tiny/iterative/metrics.json" in out.stdout
    assert "--method supervised" not in out.stdout and "--method pinn_iterative" not in out.stdout
    for bad in ("[iterative]", "[pinn, ptychonn]", "[pinn, pinn]"):
        (workflow_copy / "bad.yaml").write_text(f"compare_methods: {bad}\n")
        out = run_snakemake(workflow_copy, "compare", "--dry-run", "--configfile", TINY,
                            "bad.yaml")
        assert out.returncode != 0 and "compare_methods" in out.stdout, (bad, out.stdout)
        assert not (workflow_copy / "results").exists()


@pytest.mark.slow
def test_the_switch_puts_the_comparison_before_the_default_report(workflow_copy):
    out = run_snakemake(workflow_copy, "--dry-run", "--configfile", TINY)
    assert out.returncode == 0 and not jobs_run(out.stdout) & BASELINE_RULES, out.stdout
    (workflow_copy / "on.yaml").write_text("compare_baseline: true\n")
    out = run_snakemake(workflow_copy, "compare", "all", "--dry-run", "--configfile", TINY,
                        "on.yaml")
    assert out.returncode == 0, out.stdout
    assert jobs_run(out.stdout) == {"simulate", "validate", "train", "infer", *BASELINE_RULES,
                                    "report", "all", "compare"}  # one report, after the comparison
    assert "--comparison results/tiny/compare/comparison.json" in out.stdout


@pytest.fixture(scope="module")
def compared(tmp_path_factory) -> tuple[Path, Path]:
    """One `snakemake compare` run of the tiny experiment, pty-chi hidden from its steps:
    (workdir, run directory). The steps run as `python -m` in the workdir, so a package
    `ptychi` there that fails to import stands for pty-chi not being installed (the
    iterative method is covered with pty-chi by tests/test_iterative.py and
    tests/test_studies.py)."""
    workdir = copy_workflow(tmp_path_factory.mktemp("compare"))
    (workdir / "ptychi").mkdir()
    (workdir / "ptychi" / "__init__.py").write_text(
        'raise ImportError("pty-chi hidden by tests/test_compare.py")\n')
    out = run_snakemake(workdir, "compare", "--configfile", TINY)
    assert out.returncode == 0, out.stdout
    (run_dir,) = [p for p in (workdir / "reports").iterdir() if RUN_ID_PATTERN.match(p.name)]
    return workdir, run_dir


@pytest.mark.slow
def test_compare_run_scores_both_methods_and_says_the_iterative_one_is_missing(compared):
    workdir, _ = compared
    c = json.loads((workdir / f"results/{EXP}/compare/comparison.json").read_text())
    assert [m["name"] for m in c["methods"]] == ["pinn", "supervised", "iterative",
                                                 "pinn_iterative"]
    hybrid, iterative = c["methods"].pop(), c["methods"].pop()
    for m in (iterative, hybrid):
        assert m["unavailable"].startswith("pty-chi not installed: run `make iterative`")
        assert "pty-chi hidden by tests/test_compare.py" in m["unavailable"]
    assert c["unavailable"] == {"iterative": iterative["unavailable"],
                                "pinn_iterative": hybrid["unavailable"]}
    for step in ("iterative", "hybrid"):
        log = (workdir / f"results/{EXP}/{step}/metrics.json").read_text()
        assert "pty-chi not installed" in log
    for m in c["methods"]:
        for part in comparison.PARTS:
            assert set(m[part]) == set(comparison.METRICS)
        assert m["training_seconds"] > 0 and m["reconstruction_seconds"] > 0
        assert m["training"]["patterns"] == 64 and m["training"]["epochs"] == 2
    assert [m["training"]["mode"] for m in c["methods"]] == ["pinn", "supervised"]
    assert c["not_like_for_like"] == [] and c["verdict"]
    assert set(c["winners"]) == {*QUALITY, *comparison.COSTS,
                                 *(f"quality.{k}" for k in comparison.NO_TRUTH)}


@pytest.mark.slow
def test_compare_run_puts_the_table_in_the_run_index(compared):
    workdir, run_dir = compared
    index = (run_dir / "index.md").read_text()
    assert "## Method comparison: pinn vs supervised vs iterative vs pinn_iterative" in index
    assert "| iterative | not available: pty-chi not installed" in index
    assert "| pinn_iterative | not available: pty-chi not installed" in index
    assert "| pinn | pinn, 64 patterns x 2 epochs |" in index
    assert "| supervised | supervised, 64 patterns x 2 epochs |" in index
    assert "**Verdict:**" in index and f"]({EXP}/report/comparison.png)" in index
    assert f"({EXP}/compare/summary.md)" in index  # the compare step ran before the report
    assert (workdir / f"results/{EXP}/compare/index.md").read_text().count("**Verdict:**") == 1
    assert os.readlink(workdir / "reports" / "latest") == run_dir.name


@pytest.mark.slow
def test_compare_run_leaves_evidence_that_audits_clean(compared):
    workdir, run_dir = compared
    step = run_dir / EXP / "compare"
    manifest, problem = load_manifest(step / "manifest.json")
    assert problem is None and manifest["status"] == "ok"
    assert {"summary.md", "compare.log", "config.json", "comparison.json", "comparison.md",
            "comparison.png"} <= set(manifest["files"])
    for name in ("comparison.json", "comparison.md", "comparison.png"):
        product = f"results/{EXP}/compare/{name}"
        assert manifest["products"][product]["sha256"] == sha256_file(workdir / product)
    assert sorted(p.name for p in (run_dir / f"{EXP}_baseline").iterdir()) == ["infer", "train"]
    out = run_step("audit", "reports", cwd=workdir)
    assert out.returncode == 0, out.stdout


# ---------------------------------------------------------------- without ground truth

@pytest.mark.skipif(ptychi_solver.ptychi_version() is None, reason=ptychi_solver.PTYCHI_MISSING)
def test_without_ground_truth_compare_ranks_by_the_r_factor(iterative_without_truth):
    """Two real pty-chi runs on a scan without ground truth (30 and 2 epochs): the compare
    step accepts their metrics files, ranks the 30-epoch run first by the R-factor over its
    noise floor (the 2-epoch run has no half-data FRC: it is not ranked by it), and the
    table, the figure and the run index's section say so instead of only n/a."""
    work = iterative_without_truth
    out = run_step("compare", "--config-json", json.dumps({"experiment": EXP}),
                   "--method", "short", "results/short/metrics.json",
                   "--method", "long", "results/long/metrics.json",
                   "--out-dir", "results/compare",
                   "--report-dir", "reports/2026-01-01T000100Z/tiny/compare", cwd=work)
    assert out.returncode == 0, out.stderr
    c = json.loads((work / "results/compare/comparison.json").read_text())
    assert c["ground_truth"] is False
    assert c["ranking_without_ground_truth"] == {"r_factor_over_noise": ["long", "short"],
                                                 "half_frc_resolution_nm": ["long"]}
    assert c["winners"]["quality.r_factor_over_noise"] == ["long"]
    assert c["verdict"].startswith("no ground truth: ranked by R-factor / its noise floor, "
                                   "lower is better: long ")
    r = {m["name"]: m["quality"]["r_factor_over_noise"] for m in c["methods"]}
    assert r["long"] < r["short"]
    md = (work / "results/compare/comparison.md").read_text()
    assert f"**{number(r['long'])}**" in md
    assert (work / "results/compare/comparison.png").stat().st_size > 5000
    section = "\n".join(comparison.markdown_section(c))  # what the run index embeds
    assert "no ground truth: ranked by R-factor" in section
