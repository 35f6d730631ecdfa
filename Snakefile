"""DeNS reproduction pipeline (Liao, Smidt, Shuaibi, Das; TMLR 2024).

Targets: all (default: the report, hence every table, figure and learning curve; and the
published checkpoints at the paper scale or with config `mirror`), all_tables, one target per
table of the paper (config/tables.yaml: table1 writes table1a and table1b), figures, all_curves,
report, published (the published DeNS checkpoints beside the paper's numbers:
config/published.yaml), and one target per run:
results/{scale}/runs/{experiment}/seed{seed}/metrics.json. The scale comes from the profile or
`--config scale=NAME`; every path carries it. See README.md.
"""

from pathlib import Path

from snakemake.exceptions import WorkflowError

from dens.errors import ConfigError
from dens.pipeline.registry import load_registry


# config/config.yaml is read by load_registry (defaults under the profile's and --config's values),
# not by a `configfile:` directive, so that a syntax error in it names its line and column.
try:
    REGISTRY = load_registry(config, root=Path(workflow.basedir))
except ConfigError as error:
    raise WorkflowError(f"invalid configuration: {error}") from None
SCALE = REGISTRY.scale_name
EVALUATE_IN_TRAIN_JOB = REGISTRY.scale["evaluate_in_train_job"]


wildcard_constraints:
    experiment=r"[a-z0-9][a-z0-9_.-]*/[a-z0-9][a-z0-9_.-]*",
    seed=r"\d+",
    dataset=r"[a-z0-9][a-z0-9_.-]*",
    archive=r"[A-Za-z0-9][A-Za-z0-9_.-]*",


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/relax.smk"
include: "workflow/rules/simulate.smk"
include: "workflow/rules/tables.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/published.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        rules.report.output,
        # the published checkpoints where they can be downloaded (dens.pipeline.published.in_all)
        rules.published.input if PUBLISHED_IN_ALL else [],
