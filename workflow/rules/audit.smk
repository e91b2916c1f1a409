rule audit:
    """Audit reports/ and results/ (python -m ptycho_torch.audit): every step directory
    complete, every hash matching, every product traceable. Reads only; the table goes to
    the terminal and to the rule's log, the JSON to results/<experiment>/audit/audit.json
    (not a declared output: the rule runs whenever it is named and never reruns or blocks a
    step). Name it on its own (snakemake audit), not next to targets that run steps: it does
    not wait for them. Its log is a file under results/ the audit cannot cover (its own)."""
    log:
        log_path("audit"),
    localrule: True
    params:
        json=result("audit", "audit.json"),
    shell:
        "{PYTHON:q} -m ptycho_torch.audit reports --json-out {params.json} 2>&1 | tee {log}"
