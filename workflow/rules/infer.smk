"""Inference: the test object of this experiment (rule infer), and any data file (target
infer_file: config keys infer_file_data, infer_file_model)."""

INFER_FIGURES = {  # output name -> (file, caption)
    "figure": ("reconstruction.png", "../report/reconstruction.rst"),
    "frc": ("frc.png", "../report/frc.rst"),
    "scan": ("scan_positions.png", "../report/scan_positions.rst"),
    "quality": ("quality.png", "../report/quality.rst"),  # no ground truth needed (quality.py)
}


# snakemake infer_file --config infer_file_data=PATH [infer_file_model=PATH]
INFER_FILE_DATA = config["infer_file_data"]  # "" = the target is not configured
INFER_FILE_MODEL = config["infer_file_model"]  # "" = this experiment's trained model
INFER_FILE_DIR = result("infer_file", Path(INFER_FILE_DATA).stem or "unset")


def infer_file_inputs(wildcards) -> dict[str, str]:
    """Model and data of the infer_file target (plus the training history with this
    experiment's model), checked when the target is asked for, before anything runs: a
    missing setting or file stops Snakemake with a message naming the config key and path."""
    if not INFER_FILE_DATA:
        raise WorkflowError(
            "infer_file_data: not set; name the data file to reconstruct (CXI "
            "or PtychoPINN .npz): snakemake infer_file --config "
            "infer_file_data=PATH [infer_file_model=PATH]"
        )
    problems = [
        f"{key}: {path} not found (relative paths start at {Path.cwd()})"
        for key, path in (
            ("infer_file_data", INFER_FILE_DATA),
            ("infer_file_model", INFER_FILE_MODEL),
        )
        if path and not Path(path).is_file()
    ]
    if problems:
        raise WorkflowError("\n".join(problems))
    if INFER_FILE_MODEL:
        return {"model": INFER_FILE_MODEL, "data": INFER_FILE_DATA}
    return {
        "model": rules.train.output.model,
        "history": rules.train.output.history,
        "data": INFER_FILE_DATA,
    }


def history_arg(wildcards, input) -> str:
    return f"--history {shlex.quote(input.history)}" if hasattr(input, "history") else ""


rule infer:
    """Reconstruct the test object with the trained model and score it against the ground truth."""
    input:
        model=rules.train.output.model,
        history=rules.train.output.history,
        data=rules.simulate.output.test,
        code=step_sources("infer"),
    output:
        **{
            name: report(result("infer", png), caption=caption, category="Reconstruction")
            for name, (png, caption) in INFER_FIGURES.items()
        },
        reconstruction=result("infer", "reconstruction.h5"),
        arrays=result("infer", "reconstruction.npz"),
        metrics=result("infer", "metrics.json"),
    log:
        log_path("infer"),
    benchmark:
        benchmark_path("infer")
    threads: THREADS  # a timed step (reconstruction seconds): no other job on its cores
    params:
        inference=set_args("inference"),
        out_dir=output_dir("metrics"),
    shell:
        "{PYTHON:q} -m ptycho_torch.infer --model {input.model} --data {input.data}"
        " --history {input.history} --out-dir {params.out_dir} {params.inference} {EXECUTION}"
        " --threads {threads} --report-dir {REPORTS}/infer > {log} 2>&1"


rule infer_file:
    """Named target: reconstruct any data file (CXI or PtychoPINN .npz, config
    infer_file_data) with a trained model (infer_file_model, default this experiment's) into
    results/<experiment>/infer_file/<data file stem>/; evidence in
    reports/<run_id>/<experiment>/infer_file/. Scored only when the file holds a ground truth."""
    input:
        unpack(infer_file_inputs),
        code=step_sources("infer"),
    output:
        **{name: f"{INFER_FILE_DIR}/{png}" for name, (png, _) in INFER_FIGURES.items()},
        reconstruction=f"{INFER_FILE_DIR}/reconstruction.h5",
        arrays=f"{INFER_FILE_DIR}/reconstruction.npz",
        metrics=f"{INFER_FILE_DIR}/metrics.json",
    log:
        log_path("infer_file"),
    benchmark:
        benchmark_path("infer_file")
    threads: THREADS
    params:
        inference=set_args("inference"),
        history=history_arg,
        out_dir=output_dir("metrics"),
    shell:
        "{PYTHON:q} -m ptycho_torch.infer --step infer_file --model {input.model:q}"
        " --data {input.data:q} {params.history} --out-dir {params.out_dir:q}"
        " {params.inference} {EXECUTION} --threads {threads} --report-dir {REPORTS}/infer_file"
        " > {log} 2>&1"
