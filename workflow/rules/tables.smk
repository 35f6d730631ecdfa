# The paper's tables, built only from the metrics files runs wrote (mean and standard deviation over
# the configured seeds), with the paper's numbers (config/tables.yaml): a tidy CSV of numbers for
# analysis, Markdown and LaTeX (booktabs) for reading (dens.pipeline.tables).


rule table:
    input:
        table_metrics,
    output:
        csv=str(paths.table_file(SCALE, "{table}", "csv")),
        md=str(paths.table_file(SCALE, "{table}", "md")),
        tex=str(paths.table_file(SCALE, "{table}", "tex")),
    wildcard_constraints:
        table="|".join(REGISTRY.tables),
    params:
        options=seeds_options(),
        settings=table_settings,
        out_dir=lambda wildcards, output: str(Path(output.csv).parent),
    log:
        str(paths.job_log(SCALE, "tables", "{table}")),
    benchmark:
        str(paths.job_benchmark(SCALE, "table", "{table}"))
    conda:
        ENV
    threads: 1
    resources:
        **job_resources("table"),
    shell:
        "python -m dens table {wildcards.table} {params.options} --out-dir {params.out_dir:q} "
        "> {log:q} 2>&1"


# One target per paper table, as config/tables.yaml names them (the registry's table_targets:
# table1 writes table1a and table1b).
TABLE_FILES = {
    target: [
        str(paths.table_file(SCALE, name, ext)) for name in names for ext in ("csv", "md", "tex")
    ]
    for target, names in REGISTRY.table_targets().items()
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
