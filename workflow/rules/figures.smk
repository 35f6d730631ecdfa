# Figures 3-5 (App. G): structures of OC20, OC22 and MD17 with Gaussian noise of several scales
# added to all atoms, drawn over the original positions (lighter), one structure per row, from each
# dataset's training split; PNG and PDF (dens.pipeline.figures).


rule figure:
    input:
        figure_structures,
    output:
        png=str(paths.figure_file(SCALE, "{figure}")),
        pdf=str(paths.figure_file(SCALE, "{figure}", "pdf")),
    wildcard_constraints:
        figure="|".join(FIGURES),
    params:
        options=cli_options(),
    log:
        str(paths.job_log(SCALE, "figures", "{figure}")),
    conda:
        ENV
    threads: 1
    resources:
        **job_resources("figure"),
    shell:
        "python -m dens figure {wildcards.figure} {params.options} --out {output.png:q} {input:q} "
        "> {log:q} 2>&1"


rule figures:
    input:
        [str(paths.figure_file(SCALE, name, ext)) for name in FIGURES for ext in ("png", "pdf")],
