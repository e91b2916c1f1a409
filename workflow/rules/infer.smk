"""Inference: the test object of this experiment (rule infer), and any data file (target
infer_file: config keys infer_file_data, infer_file_model)."""


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
