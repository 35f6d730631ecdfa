# MD simulations of MD17 molecules with trained models (Table 10), starting from test
# configurations: stability and h(r) MAE (dens.simulate; no noise and no force input).


rule simulate:
    input:
        splits=split_files("test"),
        checkpoint=str(paths.checkpoint_file(SCALE, "{experiment}")),
    output:
        metrics=str(paths.metrics_file(SCALE, "{experiment}", "simulate")),
    params:
        options=cli_options(),
        run_dir=lambda wildcards: run_dir(wildcards.experiment),
    log:
        str(paths.job_log(SCALE, "simulate", "{experiment}")),
    benchmark:
        str(paths.job_benchmark(SCALE, "simulate", "{experiment}"))
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=8000,
        gres=lambda wildcards: "gpu:1" if REGISTRY.scale["gpus"] else "",
        runtime=lambda wildcards: 60 * 24 if REGISTRY.scale["gpus"] else 60,
    shell:
        "python -m dens simulate {wildcards.experiment:q} {params.options} --threads {threads} "
        "--run-dir {params.run_dir:q} > {log:q} 2>&1"
