# Relaxations (IS2RE, Tables 2 and 3): relax the initial structures of the dataset's relax splits
# with a trained run's model (no noise, no force input) and score the relaxed energies
# (dens.relax).


rule relax:
    input:
        splits=split_files("relax"),
        checkpoint=str(paths.checkpoint_file(SCALE, "{experiment}", "{seed}")),
    output:
        metrics=str(paths.metrics_file(SCALE, "{experiment}", "{seed}", "relax")),
    params:
        options=cli_options(),
        run_dir=lambda wildcards: run_dir(wildcards.experiment, wildcards.seed),
    log:
        str(paths.job_log(SCALE, "relax", "{experiment}/seed{seed}")),
    benchmark:
        str(paths.job_benchmark(SCALE, "relax", "{experiment}/seed{seed}"))
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=16000,
        gres=lambda wildcards: "gpu:1" if REGISTRY.scale["gpus"] else "",
        runtime=lambda wildcards: 60 * 24 if REGISTRY.scale["gpus"] else 60,
    shell:
        "python -m dens relax {wildcards.experiment:q} {params.options} --seed {wildcards.seed} "
        "--threads {threads} "
        "--run-dir {params.run_dir:q} > {log:q} 2>&1"
