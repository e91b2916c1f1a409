rule infer:
    """Reconstruct the test object with the trained model and score it against the ground truth."""
    input:
        model=rules.train.output.model,
        history=rules.train.output.history,
        data=rules.simulate.output.test,
        code=step_sources("infer"),
    output:
        reconstruction=result("infer", "reconstruction.h5"),
        metrics=result("infer", "metrics.json"),
        figure=report(result("infer", "reconstruction.png"), caption="../report/reconstruction.rst",
                      category="Reconstruction"),
    params:
        inference=set_args("inference"),
        out_dir=result("infer"),
    log:
        log_path("infer"),
    benchmark:
        benchmark_path("infer")
    shell:
        "{PYTHON:q} -m ptycho_torch.infer --model {input.model} --data {input.data}"
        " --history {input.history} --out-dir {params.out_dir} {params.inference} {EXECUTION}"
        " --report-dir {REPORTS}/infer > {log} 2>&1"
