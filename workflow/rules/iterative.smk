"""The iterative reference reconstruction: pty-chi (LSQML or ePIE) on the PINN's test data.

`python -m ptycho_torch.iterative` reconstructs results/<experiment>/simulate/test.cxi with the
data's probe and positions, scores it with the infer step's scorer and writes the infer
step's products to results/<experiment>/iterative/ (evidence:
reports/<run_id>/<experiment>/iterative/). It is the third method of the comparison
(compare.smk) and runs only when the comparison does: `snakemake compare`,
`compare_baseline: true`, or a study; never in the default target otherwise.

pty-chi is optional (`make iterative`). Without it the step still succeeds and writes
metrics.json saying "pty-chi not installed: ..." (and a figure saying so), so the rest of the
comparison runs. The installed pty-chi version is a parameter of the rule: installing or
upgrading it reruns the reconstruction.
"""


rule iterative:
    """Reconstruct the test object with pty-chi (iterative.engine, iterative.epochs)."""
    input:
        data=rules.simulate.output.test,
        code=step_sources("iterative"),
    output:
        # Declared: what the step always writes. With pty-chi it also writes the infer
        # step's other products here (reconstruction.h5, .npz, frc.png, scan_positions.png),
        # recorded in its manifest.
        metrics=result("iterative", "metrics.json"),
        figure=report(
            result("iterative", "reconstruction.png"),
            caption="../report/iterative.rst",
            category="Comparison",
        ),
    log:
        log_path("iterative"),
    benchmark:
        benchmark_path("iterative")
    threads: THREADS  # a timed step: its cores are not shared with another job
    params:
        config=config_json("experiment", "seed", "data", "iterative"),
        ptychi=installed_version("ptychi"),  # a rerun trigger: installing it reruns the step
        out_dir=output_dir("metrics"),
    shell:
        "{PYTHON:q} -m ptycho_torch.iterative --config-json {params.config:q} --data {input.data}"
        " --out-dir {params.out_dir} {EXECUTION} --threads {threads}"
        " --report-dir {REPORTS}/iterative > {log} 2>&1"


rule hybrid:
    """The hybrid pinn_iterative: pty-chi with the iterative rule's settings, started from the
    PINN's stitched object; its times include the PINN's reconstruction (iterative.py)."""
    input:
        data=rules.simulate.output.test,
        start=rules.infer.output.arrays,
        code=step_sources("iterative"),
    output:
        metrics=result("hybrid", "metrics.json"),
        figure=report(
            result("hybrid", "reconstruction.png"),
            caption="../report/hybrid.rst",
            category="Comparison",
        ),
    log:
        log_path("hybrid"),
    benchmark:
        benchmark_path("hybrid")
    threads: THREADS
    params:
        config=config_json("experiment", "seed", "data", "iterative"),
        ptychi=installed_version("ptychi"),
        out_dir=output_dir("metrics"),
    shell:
        "{PYTHON:q} -m ptycho_torch.iterative --config-json {params.config:q} --data {input.data}"
        " --init-object {input.start} --step hybrid --out-dir {params.out_dir} {EXECUTION}"
        " --threads {threads} --report-dir {REPORTS}/hybrid > {log} 2>&1"
