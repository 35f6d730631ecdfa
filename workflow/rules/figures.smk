# Figures 3-5 (App. G): structures of OC20, OC22 and MD17 with Gaussian noise of several scales
# added to all atoms, drawn over the original positions (dens.figures).

FIGURE_DATASETS = {
    "figure3": ["oc20-2m"],
    "figure4": ["oc22"],
    "figure5": ["md17-aspirin", "md17-ethanol", "md17-naphthalene", "md17-uracil"],
}


rule figure:
    input:
        lambda wildcards: [
            path for dataset in FIGURE_DATASETS[wildcards.figure] for path in dataset_files(dataset)
        ],
    output:
        f"{RESULTS}/figures/{{figure}}.png",
    wildcard_constraints:
        figure="|".join(FIGURE_DATASETS),
    params:
        options=cli_options(),
    log:
        f"{RESULTS}/logs/figures/{{figure}}.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "dens figure {wildcards.figure} {params.options} --out {output:q} > {log:q} 2>&1"


rule figures:
    input:
        [f"{RESULTS}/figures/{name}.png" for name in FIGURE_DATASETS],
