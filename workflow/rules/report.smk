def comparison_for_report(wanted: bool) -> dict[str, list[str]]:
    """The comparison products a report embeds (made by compare.smk): ``{"json": [...],
    "figures": [...]}``, both empty unless ``wanted`` (the report rule: compare_baseline)."""
    return {
        "json": [result("compare", "comparison.json")] if wanted else [],
        "figures": [result("compare", "comparison.png")] if wanted else [],
    }


def comparison_arg(wildcards, input) -> str:
    """`--comparison FILE` for the report command when the rule has a comparison input."""
    files = [input.comparison] if isinstance(input.comparison, str) else input.comparison
    return " ".join(f"--comparison {shlex.quote(f)}" for f in files)


rule report:
    """Index of this run: steps, metrics, figures and the run that made each product."""
    input:
        metrics=rules.infer.output.metrics,
        figures=[
            rules.train.output.loss,
            rules.infer.output.figure,
            rules.infer.output.frc,
            rules.infer.output.scan,
            rules.infer.output.quality,
            *comparison_for_report(COMPARE)["figures"],
        ],
        comparison=comparison_for_report(COMPARE)["json"],  # compare_baseline: true (compare.smk)
        products=[
            *rules.simulate.output,
            *rules.validate.output,
            *rules.train.output,
            *rules.infer.output,
        ],
        code=step_sources("report"),
    output:
        index=report(result("report", "index.md"), caption="../report/index.rst", category="Run"),
    log:
        log_path("report"),
    benchmark:
        benchmark_path("report")
    params:
        config=SCIENCE,
        comparison=comparison_arg,  # "" or --comparison results/<experiment>/compare/comparison.json
        experiment=EXP,
        # the steps before it (their log and benchmark: sealed in its manifest for the audit)
        seal=sealed_files(PIPELINE_STEPS + (COMPARISON_STEPS if COMPARE else ())),
    shell:
        "{PYTHON:q} -m ptycho_torch.report --config-json {params.config:q}"
        " --run-dir reports/$PTYCHO_RUN_ID --experiment {params.experiment}"
        " --metrics {input.metrics} --figures {input.figures} {params.comparison}"
        " --seal {params.seal} --out {output.index} > {log} 2>&1"
