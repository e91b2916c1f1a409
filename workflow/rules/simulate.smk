rule simulate:
    """Simulate the training and test scans (different objects) as CXI files."""
    input:
        code=step_sources("simulate"),
    output:
        train=result("simulate", "train.cxi"),
        test=result("simulate", "test.cxi"),
    params:
        config=config_json("experiment", "seed", "data"),
    log:
        log_path("simulate"),
    benchmark:
        benchmark_path("simulate")
    shell:
        "{PYTHON:q} -m ptycho_torch.simulate --config-json {params.config:q}"
        " --train-out {output.train} --test-out {output.test}"
        " --report-dir {REPORTS}/simulate > {log} 2>&1"
