rule probe_warmup:
    """model.probe_source: iterative: refine the data file's probe (and, with
    iterative.position_correction, the positions) by a short pty-chi run on the training scan
    (model.probe_warmup_epochs); the train rule takes its probe.npz."""
    input:
        payload=rules.validate.output.payload,  # after the checks of the settings and data
        data=rules.simulate.output.train,
        code=step_sources("probe_warmup"),
    output:
        probe=result("probe_warmup", "probe.npz"),
    log:
        log_path("probe_warmup"),
    benchmark:
        benchmark_path("probe_warmup")
    threads: THREADS  # a timed step: its cores are not shared with another job
    params:
        config=config_json("experiment", "seed", "data", "model", "iterative"),
        ptychi=installed_version("ptychi"),  # a rerun trigger: installing it reruns the step
    shell:
        "{PYTHON:q} -m ptycho_torch.probe_warmup --config-json {params.config:q}"
        " --data {input.data} --out {output.probe} {EXECUTION} --threads {threads}"
        " --report-dir {REPORTS}/probe_warmup > {log} 2>&1"


def warmup_input(wildcards) -> list[str]:
    """The warm-up's probe file for the training rules (model.probe_source: iterative)."""
    return [rules.probe_warmup.output.probe] if PROBE_WARMUP else []


def probe_arg(wildcards, input) -> str:
    """The train step's --probe option (empty for model.probe_source: given)."""
    return f"--probe {shlex.quote(input.probe[0])}" if PROBE_WARMUP else ""


rule train:
    """Train the PINN on the training counts (unsupervised: no ground truth is used), with the
    data's probe or, for model.probe_source: iterative, the warm-up's."""
    input:
        payload=rules.validate.output.payload,
        data=rules.simulate.output.train,
        probe=warmup_input,
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
        probe=probe_arg,
    shell:
        train_shell("{params.probe}", "{REPORTS}")
