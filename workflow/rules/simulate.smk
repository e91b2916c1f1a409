"""The data step: simulate the scans, or (data.source: file) convert the measured files.

With `data.source: file` nothing is simulated: the same step (python -m ptycho_torch.simulate,
evidence reports/<run_id>/<experiment>/simulate/) reads `data.train_file` (and
`data.test_file`, or holds out `data.test_fraction` of the training scan, or tests on the
training scan itself) and writes them as the pipeline's CXI files, so every later step is the
same for simulated and measured data. The measured files are inputs of the rule (a changed file
reruns it), and its params (like every rule's: `config_json` in common.smk) hold only the
settings the conversion reads: changing a simulation setting (SIMULATION_ONLY in
ptycho_torch/config.py) reruns nothing.
"""


def measured_files() -> list[str]:
    """The measured data files of `data.source: file` (none when simulating)."""
    d = config["data"]
    return [f for f in (d["train_file"], d["test_file"]) if f] if d["source"] == "file" else []


rule simulate:
    """Simulate the training and test scans (different objects) as CXI files, or convert the
    measured file(s) of data.source: file (see this file's notes)."""
    input:
        code=step_sources("simulate"),
        measured=measured_files(),
    output:
        train=result("simulate", "train.cxi"),
        test=result("simulate", "test.cxi"),
    log:
        log_path("simulate"),
    benchmark:
        benchmark_path("simulate")
    params:
        config=config_json("experiment", "seed", "data"),
    shell:
        "{PYTHON:q} -m ptycho_torch.simulate --config-json {params.config:q}"
        " --train-out {output.train} --test-out {output.test}"
        " --report-dir {REPORTS}/simulate > {log} 2>&1"
