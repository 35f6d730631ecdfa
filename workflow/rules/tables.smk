# The paper's tables as CSV and LaTeX, built only from the metrics files runs wrote, with the
# paper's numbers (config/tables.yaml) side by side (dens.tables).

from dens.tables import METRICS_FILES


def table_metrics(wildcards):
    return [
        f"{run_dir(experiment)}/{METRICS_FILES[source]}"
        for source, experiments in REGISTRY.table_inputs(wildcards.table).items()
        for experiment in experiments
    ]


def table_settings(wildcards):
    """Settings tables (7, 8, 9) show configured values: a config change re-runs them."""
    table = REGISTRY.table(wildcards.table)
    if table["kind"] != "settings":
        return ""
    return json.dumps([REGISTRY.resolve(c["experiment"]) for c in table["columns"]], sort_keys=True)


rule table:
    input:
        table_metrics,
    output:
        csv=f"{RESULTS}/tables/{{table}}.csv",
        tex=f"{RESULTS}/tables/{{table}}.tex",
    wildcard_constraints:
        table="|".join(REGISTRY.tables),
    params:
        options=cli_options(),
        settings=table_settings,
    log:
        f"{RESULTS}/logs/tables/{{table}}.log",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "dens table {wildcards.table} {params.options} --out-dir {RESULTS}/tables > {log:q} 2>&1"


TABLE_FILES = {
    f"table{number}": [f"{RESULTS}/tables/{name}.{ext}" for name in names for ext in ("csv", "tex")]
    for number, names in {
        1: ["table1a", "table1b"],
        **{n: [f"table{n}"] for n in range(2, 11)},
    }.items()
}


rule all_tables:
    input:
        [path for files in TABLE_FILES.values() for path in files],


for _target, _files in TABLE_FILES.items():

    rule:
        name:
            _target
        input:
            _files,
