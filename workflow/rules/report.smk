# Learning curves of every results table (dens.pipeline.curves: validation force and energy MAE against
# epoch from the runs' training logs) and the HTML report that gathers every table, figure and
# curve of the scale (dens.pipeline.report, captions in workflow/report/captions.yaml), with the table of
# the published checkpoints where `all` includes them (the paper scale, or config `mirror` set).


rule curves:
    input:
        lambda wildcards: [str(path) for path in curve_inputs(REGISTRY, wildcards.table)],
    output:
        png=str(paths.curves_file(SCALE, "{table}", "png")),
        pdf=str(paths.curves_file(SCALE, "{table}", "pdf")),
    wildcard_constraints:
        table="|".join(curve_tables(REGISTRY)),
    params:
        options=seeds_options(),
    log:
        str(paths.job_log(SCALE, "curves", "{table}")),
    conda:
        ENV
    threads: 1
    resources:
        **job_resources("figure"),
    shell:
        "python -m dens curves {wildcards.table} {params.options} --out {output.png:q} "
        "> {log:q} 2>&1"


rule all_curves:
    input:
        [str(paths.curves_file(SCALE, name, "png")) for name in curve_tables(REGISTRY)],


rule report:
    input:
        tables=rules.all_tables.input,
        figures=rules.figures.input,
        curves=rules.all_curves.input,
        captions="workflow/report/captions.yaml",
        published=PUBLISHED_TABLE_FILES if PUBLISHED_IN_ALL else [],
    output:
        str(paths.report_file(SCALE)),
    params:
        # --published: with the table of the published checkpoints (where `all` builds it)
        options=seeds_options() + (" --published" if PUBLISHED_IN_ALL else ""),
    log:
        str(paths.job_log(SCALE, "report", "report")),
    conda:
        ENV
    threads: 1
    resources:
        **job_resources("figure"),
    shell:
        "python -m dens report {params.options} --out {output:q} > {log:q} 2>&1"
