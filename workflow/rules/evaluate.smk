# Evaluation: MAEs of the best-validation (EMA) weights on the splits the dataset's `evaluate`
# role names (MD17: test; OC20 S2EF-2M: the four val splits), written to
# results/{scale}/runs/{experiment}/metrics.json (dens.evaluate).


rule evaluate:
    input:
        splits=split_files("evaluate"),
        checkpoint=str(paths.checkpoint_file(SCALE, "{experiment}", "{seed}")),
        log_csv=str(paths.training_log(SCALE, "{experiment}", "{seed}")),
    output:
        metrics=str(paths.metrics_file(SCALE, "{experiment}", "{seed}", "evaluate")),
    params:
        options=cli_options(),
        run_dir=lambda wildcards: run_dir(wildcards.experiment, wildcards.seed),
    log:
        str(paths.job_log(SCALE, "evaluate", "{experiment}/seed{seed}")),
    benchmark:
        str(paths.job_benchmark(SCALE, "evaluate", "{experiment}/seed{seed}"))
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=8000,
        gres=lambda wildcards: "gpu:1" if REGISTRY.scale["gpus"] else "",
        runtime=lambda wildcards: 60 * 12 if REGISTRY.scale["gpus"] else 60,
    shell:
        "python -m dens evaluate {wildcards.experiment:q} {params.options} --seed {wildcards.seed} "
        "--threads {threads} "
        "--run-dir {params.run_dir:q} {input.splits:q} > {log:q} 2>&1"
