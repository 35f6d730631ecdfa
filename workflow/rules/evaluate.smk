# Evaluation: test-split (MD17) or validation-split (OC20/OC22) MAEs of the best-validation EMA
# weights, written to results/{scale}/runs/{experiment}/metrics.json (dens.evaluate).


rule evaluate:
    input:
        data=experiment_data,
        checkpoint=f"{RESULTS}/runs/{{experiment}}/checkpoints/best.pt",
        log_csv=f"{RESULTS}/runs/{{experiment}}/log.csv",
    output:
        metrics=f"{RESULTS}/runs/{{experiment}}/metrics.json",
    params:
        options=cli_options(),
        run_dir=lambda wildcards: run_dir(wildcards.experiment),
    log:
        f"{RESULTS}/logs/evaluate/{{experiment}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate/{{experiment}}.tsv"
    threads: 1
    resources:
        mem_mb=8000,
        gres=lambda wildcards: "gpu:1" if REGISTRY.scale["gpus"] else "",
        runtime=lambda wildcards: 60 * 12 if REGISTRY.scale["gpus"] else 60,
    shell:
        "dens evaluate {wildcards.experiment:q} {params.options} --threads {threads} "
        "--run-dir {params.run_dir:q} > {log:q} 2>&1"
