# MD simulations of MD17 molecules with trained models (Table 10): stability and h(r) MAE
# (dens.simulate; no noise and no force input).


rule simulate:
    input:
        data=experiment_data,
        checkpoint=f"{RESULTS}/runs/{{experiment}}/checkpoints/best.pt",
    output:
        metrics=f"{RESULTS}/runs/{{experiment}}/simulate/metrics.json",
    params:
        options=cli_options(),
        run_dir=lambda wildcards: run_dir(wildcards.experiment),
    log:
        f"{RESULTS}/logs/simulate/{{experiment}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/simulate/{{experiment}}.tsv"
    threads: 1
    resources:
        mem_mb=8000,
        gres=lambda wildcards: "gpu:1" if REGISTRY.scale["gpus"] else "",
        runtime=lambda wildcards: 60 * 24 if REGISTRY.scale["gpus"] else 60,
    shell:
        "dens simulate {wildcards.experiment:q} {params.options} --threads {threads} "
        "--run-dir {params.run_dir:q} > {log:q} 2>&1"
