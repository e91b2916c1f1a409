"""Studies: one experiment per value of one setting, the three methods compared at each.

    snakemake study_dose --configfile config/studies/dose.yaml      # or the target `study`

A study file (config/studies/*.yaml) is an overlay with a workflow-level `study:` setting,

    experiment: dose              # the study's name: results/dose/study/
    study:
      key: data.nphotons          # any experiment setting (dotted key)
      values: [1.0e+3, 1.0e+5, 1.0e+7, 1.0e+9]

and the (small) experiment every value is run with. Each value becomes one experiment,
`<experiment>_<setting>_<value>` (e.g. `dose_nphotons_1e9`): the experiment config with that
value, run by this very workflow as a Snakemake module (`module` + `use rule *`, rules
prefixed with the experiment name), so each value has exactly the rules, products
(results/<point>/...) and evidence (reports/<run_id>/<point>/...) of a normal experiment
and the audit checks them as such. The study asks for each value's method comparison (PINN,
supervised baseline, iterative pty-chi reference: compare.smk) and then runs
`python -m ptycho_torch.studies`, which gathers them into results/<experiment>/study/
quality.{json,csv,md,png} (evidence reports/<run_id>/<experiment>/study/). A value's
products are reused by later runs as usual: adding a value runs only that value.

Without `study:` in the config nothing here is defined (the modules themselves get the
config without it).

One Snakemake quirk: `snakemake -n -p` prints a value's shell commands formatted with the
study's globals (e.g. --report-dir reports/<run_id>/<experiment>/...), while the commands
that run use the value's own (reports/<run_id>/<point>/...): Snakemake 9 formats the
printed command with the main workflow's globals, the executed one in the module's
namespace. tests/test_studies.py checks where the evidence really goes.
"""

from ptycho_torch.study_points import point_configs


def study_points(cfg: dict) -> dict[str, tuple[object, dict]]:
    """``{experiment of a value: (value, its config)}`` (ptycho_torch.study_points);
    every invalid value named at once."""
    try:
        return point_configs(cfg, WORKFLOW_KEYS)
    except ConfigError as exc:
        lines = "\n".join(f"  error: {p}" for p in exc.problems)
        raise WorkflowError(f"invalid study, {len(exc.problems)} problem(s):\n{lines}") from None


def inherit_rule_settings(prefix: str) -> None:
    """Give each rule ``<prefix><rule>`` of a value the --set-resources / --set-threads (and a
    profile's set-resources / set-threads, e.g. the GPU of `train` in profiles/slurm) that
    name ``<rule>``, unless it is named itself: Snakemake matches those by rule name, and a
    value's rules carry its prefix. Reads them from the public fields of Snakemake's
    ResourceSettings (`overwrite_resources`, `overwrite_threads`: rule name -> settings);
    threads are the rule's `_cores` resource, as Snakemake stores them."""
    resources = workflow.resource_settings.overwrite_resources
    threads = workflow.resource_settings.overwrite_threads
    for each in workflow.rules:
        name, base = each.name, each.name.removeprefix(prefix)
        if name == base:
            continue
        if name not in resources and base in resources:
            each.resources.update(resources[base])
        if name not in threads and base in threads:
            each.resources["_cores"] = threads[base]


STUDY = config.get("study")

if STUDY:
    STUDY_POINTS = study_points(config)

    # module name <point>_: its rules are named <point>_<rule>
    for STUDY_MODULE, STUDY_CONFIG in ((f"{n}_", c) for n, (_, c) in STUDY_POINTS.items()):

        module:
            name: STUDY_MODULE
            snakefile:
                str(Path(workflow.basedir) / "Snakefile")
            config:
                STUDY_CONFIG

        # every rule of the point's workflow, named <point>_<rule>; its own default target out
        use rule * from STUDY_MODULE exclude all as STUDY_MODULE*

    for STUDY_MODULE in (f"{n}_" for n in STUDY_POINTS):
        inherit_rule_settings(STUDY_MODULE)

    rule study:
        """Gather every value's method comparison into the quality-vs-setting table and plot."""
        input:
            comparisons=[f"results/{name}/compare/comparison.json" for name in STUDY_POINTS],
            code=step_sources("studies"),
        output:
            json=result("study", "quality.json"),
            csv=result("study", "quality.csv"),
            table=result("study", "quality.md"),
            figure=report(
                result("study", "quality.png"), caption="../report/study.rst", category="Study"
            ),
        log:
            log_path("study"),
        benchmark:
            benchmark_path("study")
        params:
            config=SCIENCE,
            points=" ".join(
                f"--point {shlex.quote(json.dumps(value))} "
                f"results/{name}/compare/comparison.json"
                for name, (value, _) in STUDY_POINTS.items()
            ),
            key=STUDY["key"],
            # every value's steps before it (their log and benchmark: sealed in its manifest)
            seal=" ".join(
                sealed_files(PIPELINE_STEPS + COMPARISON_STEPS, name) for name in STUDY_POINTS
            ),
            out_dir=output_dir("json"),
        shell:
            "{PYTHON:q} -m ptycho_torch.studies --config-json {params.config:q}"
            " --key {params.key} {params.points} --seal {params.seal} --out-dir {params.out_dir}"
            " --report-dir {REPORTS}/study > {log} 2>&1"

    rule:
        """Named target study_<experiment> (e.g. study_dose): the study's table and plot."""
        name:
            f"study_{EXP}"
        input:
            rules.study.output,
        localrule: True
