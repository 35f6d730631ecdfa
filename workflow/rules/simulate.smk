# MD simulations of MD17 molecules with trained models (Table 10), starting from test
# configurations: stability and h(r) MAE (dens.simulate; no noise and no force input).


rule simulate:
    input:
        splits=split_files("test"),
        checkpoint=str(paths.checkpoint_file(SCALE, "{experiment}", "{seed}")),
    output:
        metrics=str(paths.metrics_file(SCALE, "{experiment}", "{seed}", "simulate")),
    params:
        options=cli_options(),
        run_dir=lambda wildcards: run_dir(wildcards.experiment, wildcards.seed),
    log:
        str(paths.job_log(SCALE, "simulate", "{experiment}/seed{seed}")),
    benchmark:
        str(paths.job_benchmark(SCALE, "simulate", "{experiment}/seed{seed}"))
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=8000,
        gres=lambda wildcards: "gpu:1" if REGISTRY.scale["gpus"] else "",
        runtime=lambda wildcards: 60 * 24 if REGISTRY.scale["gpus"] else 60,
    shell:
        "python -m dens simulate {wildcards.experiment:q} {params.options} --seed {wildcards.seed} "
        "--threads {threads} "
        "--run-dir {params.run_dir:q} > {log:q} 2>&1"
