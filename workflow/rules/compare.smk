"""Method comparison on the same test data: the PINN, the supervised PtychoNN-style baseline
and the iterative pty-chi reference (iterative.smk; "not available" without pty-chi).

The baseline is the same network, data, payload, number of patterns and epochs, trained with
`training.mode=supervised` (L1 loss on ground-truth patches). Its products go to
results/<experiment>/baseline/{train,infer}/; its evidence to
reports/<run_id>/<experiment>_baseline/{train,infer}/ (it runs as the sibling experiment
"<experiment>_baseline": the train and infer steps name their evidence directory after the
step, and the audit checks that name, so a second `train` needs its own experiment
directory). The compare step (python -m ptycho_torch.compare) scores every method in
METHODS side by side: results/<experiment>/compare/, evidence
reports/<run_id>/<experiment>/compare/.

When the comparison runs and how it reaches the run index:

* `compare_baseline: true`: the report rule itself takes the comparison as an input
  (report.smk), so `snakemake` runs the baseline, then compare, then the report, and the
  index has the table. The target `compare` is then the comparison plus that report.
* `compare_baseline: false` (default, keeps `snakemake` within its time budget): nothing
  here runs unless asked for. `snakemake compare` asks for `report_with_comparison`: the
  report rule (same command, same evidence directory reports/<run_id>/<experiment>/report/)
  with the comparison as an extra input, so it can only start after compare, and writes
  its fixed copy to results/<experiment>/compare/index.md. Name `compare` on its own, not
  together with `report` or `all`: both reports would write the one report directory of the
  run (the second refuses).

`compare_methods` names the methods compared (default: all four; leave `supervised` out for
a measured scan, which has no ground-truth object to train it on). Another method adds its
rule, one entry to ALL_METHODS: name -> (metrics.json, model.pt or None when nothing is
trained), as the iterative reference does, its steps to METHOD_STEPS (common.smk) and its
name to the schema's `compare_methods`.
"""

BASELINE_EXP = f"{EXP}_baseline"  # the baseline's experiment name (its evidence directory)
BASELINE_REPORTS = f"reports/$PTYCHO_RUN_ID/{BASELINE_EXP}"  # + /<step>, expanded by the shell


def baseline(step: str, name: str = "") -> str:
    """Baseline product path results/<experiment>/baseline/<step>/<name>."""
    return result(f"baseline/{step}", name)


# The baseline's steps declare the threads torch uses (THREADS, common.smk), as the train,
# infer and iterative rules do, so the scheduler does not squeeze another job onto their
# cores: the comparison's times would measure that contention.


rule baseline_train:
    """Train the supervised baseline: the PINN's payload and data, training.mode=supervised."""
    input:
        payload=rules.validate.output.payload,
        data=rules.simulate.output.train,
        probe=warmup_input,  # the PINN's probe (train.smk)
        code=step_sources("train"),
    output:
        model=baseline("train", "model.pt"),
        history=baseline("train", "history.csv"),
        loss=baseline("train", "loss.png"),
    log:
        log_path("baseline_train"),
    benchmark:
        benchmark_path("baseline_train")
    threads: THREADS
    resources:
        processes=1,  # as the train rule: > 1 launches data-parallel training under torchrun
    params:
        mode=f"--set training.mode=supervised --set {shlex.quote(f'experiment={json.dumps(BASELINE_EXP)}')}",
        out_dir=output_dir("model"),
        probe=probe_arg,
    shell:
        train_shell("{params.mode} {params.probe}", "{BASELINE_REPORTS}")


rule baseline_infer:
    """Reconstruct the test object with the baseline (the PINN's inference settings)."""
    input:
        model=rules.baseline_train.output.model,
        history=rules.baseline_train.output.history,
        data=rules.simulate.output.test,
        code=step_sources("infer"),
    output:
        reconstruction=baseline("infer", "reconstruction.h5"),
        metrics=baseline("infer", "metrics.json"),
        figure=baseline("infer", "reconstruction.png"),
    log:
        log_path("baseline_infer"),
    benchmark:
        benchmark_path("baseline_infer")
    threads: THREADS
    params:
        inference=set_args("inference"),
        out_dir=output_dir("metrics"),
    shell:
        "{PYTHON:q} -m ptycho_torch.infer --model {input.model} --data {input.data}"
        " --history {input.history} --out-dir {params.out_dir} {params.inference} {EXECUTION}"
        " --threads {threads} --report-dir {BASELINE_REPORTS}/infer > {log} 2>&1"


# The methods that can be compared: name -> (metrics.json, model.pt or None). The comparison
# runs those of `compare_methods` (common.smk: COMPARED), in that order.
ALL_METHODS = {
    "pinn": (rules.infer.output.metrics, rules.train.output.model),
    "supervised": (rules.baseline_infer.output.metrics, rules.baseline_train.output.model),
    "iterative": (rules.iterative.output.metrics, None),  # pty-chi (iterative.smk)
    # pty-chi from the PINN's object; its training is the PINN's (iterative.smk)
    "pinn_iterative": (rules.hybrid.output.metrics, rules.train.output.model),
}
METHODS = {name: ALL_METHODS[name] for name in COMPARED}


rule comparison:
    """Score the methods side by side on the test object (python -m ptycho_torch.compare)."""
    input:
        methods=[f for files in METHODS.values() for f in files if f],
        code=step_sources("compare"),
    output:
        json=result("compare", "comparison.json"),
        table=result("compare", "comparison.md"),
        figure=report(
            result("compare", "comparison.png"),
            caption="../report/comparison.rst",
            category="Comparison",
        ),
    log:
        log_path("compare"),
    benchmark:
        benchmark_path("compare")
    params:
        config=SCIENCE,
        methods=" ".join(
            f"--method {name} {metrics} {model or ''}".strip()
            for name, (metrics, model) in METHODS.items()
        ),
        out_dir=output_dir("json"),
    shell:
        "{PYTHON:q} -m ptycho_torch.compare --config-json {params.config:q} {params.methods}"
        " --out-dir {params.out_dir} --report-dir {REPORTS}/compare > {log} 2>&1"


if COMPARE:
    COMPARED_INDEX = rules.report.output.index  # the report already waits for the comparison
else:

    use rule report as report_with_comparison with:
        input:
            **{
                **rules.report.input,
                "figures": [*rules.report.input.figures, rules.comparison.output.figure],
                "comparison": [rules.comparison.output.json],
            },
        output:
            index=report(
                result("compare", "index.md"), caption="../report/index.rst", category="Run"
            ),
        log:
            log_path("report_with_comparison"),
        benchmark:
            benchmark_path("report_with_comparison")
        params:
            seal=sealed_files(PIPELINE_STEPS + COMPARISON_STEPS),

    COMPARED_INDEX = rules.report_with_comparison.output.index


rule compare:
    """Named target: the method comparison and this run's index holding its table."""
    input:
        rules.comparison.output,
        COMPARED_INDEX,
    localrule: True
