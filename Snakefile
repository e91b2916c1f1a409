"""ptycho_torch: simulate -> validate -> train -> infer -> report.

    snakemake -c2                      # the default experiment (config/config.yaml)
    snakemake -c2 train                # up to a named step
    snakemake -c2 --configfile my.yaml # overlay some settings

Products: results/<experiment>/<step>/; evidence: reports/<run_id>/<experiment>/<step>/.
"""

from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"  # checks the config, sets the run id and the helpers
include: "workflow/rules/simulate.smk"
include: "workflow/rules/validate.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/infer.smk"
include: "workflow/rules/report.smk"


report: "workflow/report/workflow.rst"


localrules: all, validate, report


rule all:
    default_target: True
    input:
        rules.report.output,


onsuccess:
    print(where_results_are())
