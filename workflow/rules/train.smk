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
    log:
        log_path("train"),
    benchmark:
        benchmark_path("train")
    threads: THREADS  # the step's torch threads (common.smk)
    resources:
        # Data-parallel training processes on one node, one per GPU (gloo on CPU); > 1 launches
        # them with torchrun. Set it where the GPUs are asked for (profiles/slurm/config.yaml)
        # or with --set-resources train:processes=N. Not a rerun trigger (execution only).
        processes=1,
    params:
        out_dir=output_dir("model"),
    shell:
        train_shell("", "{REPORTS}")
