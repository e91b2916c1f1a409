"""ptycho_torch: simulate -> validate -> train -> infer -> report.

    snakemake -c2                      # the default experiment (config/config.yaml)
    snakemake -c2 train                # up to a named step
    snakemake -c2 --configfile my.yaml # overlay some settings
    snakemake -c1 audit                # verify the evidence (python -m ptycho_torch.audit)
    snakemake -c2 infer_file --config infer_file_data=scan.cxi   # reconstruct any data file
    snakemake -c2 compare              # PINN vs supervised baseline vs pty-chi, table in the run index
    snakemake -c2 study_dose --configfile config/studies/dose.yaml   # a study (config/studies/)

Products: results/<experiment>/<step>/; evidence: reports/<run_id>/<experiment>/<step>/.
"""

from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"  # checks the config, sets the run id and the shared helpers
include: "workflow/rules/simulate.smk"
include: "workflow/rules/validate.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/infer.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/iterative.smk"  # pty-chi reference reconstruction (compare, studies)
include: "workflow/rules/compare.smk"  # snakemake compare: PINN vs supervised baseline (compare_baseline)
include: "workflow/rules/studies.smk"  # snakemake study_<name> --configfile config/studies/<name>.yaml
include: "workflow/rules/audit.smk"  # snakemake audit: verify reports/ and results/


report: "workflow/report/workflow.rst"


localrules:
    all,


rule all:
    default_target: True
    input:
        rules.report.output,


def where_results_are() -> str:
    """What `onsuccess` prints."""
    ran = Path("reports", RUN_ID).is_dir()
    return "\n".join(
        [
            f"ptycho_torch: experiment {EXP!r}",
            f"  reconstruction: {result('infer', 'reconstruction.h5')}",
            f"  figures:        {result('infer', 'reconstruction.png')}, {result('train', 'loss.png')}",
            f"  metrics:        {result('infer', 'metrics.json')}",
            *(
                [
                    f"  comparison:     {result('compare', 'comparison.md')} (PINN, supervised baseline, iterative)"
                ]
                if Path(result("compare", "comparison.md")).is_file()
                else []
            ),
            *(
                [f"  infer_file:     {INFER_FILE_DIR}/ ({INFER_FILE_DATA}, infer.smk)"]
                if INFER_FILE_DATA and Path(INFER_FILE_DIR).is_dir()
                else []
            ),
            f"  report:         {result('report', 'index.md')}",
            (
                f"  evidence:       reports/{RUN_ID}/ (this run)"
                if ran
                else "  evidence:       nothing ran in this invocation; see reports/latest/"
            ),
            "  latest run:     reports/latest/index.md",
        ]
    )


onsuccess:
    print(where_results_are())
