rule train:
    """Train the PINN on the training counts (unsupervised: no ground truth is used)."""
    input:
        payload=rules.validate.output.payload,
        data=rules.simulate.output.train,
        code=step_sources("train"),
    output:
        model=result("train", "model.pt"),
        history=result("train", "history.csv"),
        loss=report(result("train", "loss.png"), caption="../report/loss.rst", category="Training"),
    params:
        out_dir=result("train"),
    log:
        log_path("train"),
    benchmark:
        benchmark_path("train")
    shell:
        "{PYTHON:q} -m ptycho_torch.train --payload {input.payload} --data {input.data}"
        " --out-dir {params.out_dir} {EXECUTION}"
        " --report-dir {REPORTS}/train > {log} 2>&1"
