rule validate:
    """Check the settings against both data files (and a fine-tuning start model); report
    what the data hold; write the resolved, hashed training payload."""
    input:
        train=rules.simulate.output.train,
        test=rules.simulate.output.test,
        init_model=[config["training"]["init_model"]] if config["training"]["init_model"] else [],
        code=step_sources("validate"),
    output:
        payload=result("validate", "payload.json"),
    log:
        log_path("validate"),
    benchmark:
        benchmark_path("validate")
    params:
        config=config_json("experiment", "seed", "data", "model", "training"),
    shell:
        "{PYTHON:q} -m ptycho_torch.validate --config-json {params.config:q}"
        " --train-data {input.train} --test-data {input.test} --out {output.payload}"
        " --report-dir {REPORTS}/validate > {log} 2>&1"
