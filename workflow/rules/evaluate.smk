# Evaluation: MAEs of the best-validation (EMA) weights on the splits the dataset's `evaluate`
# role names (MD17: test; OC20 S2EF-2M: the four val splits), written to
# results/{scale}/runs/{experiment}/metrics.json (dens.evaluate).


rule evaluate:
    input:
        splits=split_files("evaluate"),
        checkpoint=str(paths.checkpoint_file(SCALE, "{experiment}")),
        log_csv=str(paths.training_log(SCALE, "{experiment}")),
    output:
        metrics=str(paths.metrics_file(SCALE, "{experiment}", "evaluate")),
    params:
        options=cli_options(),
        run_dir=lambda wildcards: run_dir(wildcards.experiment),
    log:
        str(paths.job_log(SCALE, "evaluate", "{experiment}")),
    benchmark:
        str(paths.job_benchmark(SCALE, "evaluate", "{experiment}"))
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=8000,
        gres=lambda wildcards: "gpu:1" if REGISTRY.scale["gpus"] else "",
        runtime=lambda wildcards: 60 * 12 if REGISTRY.scale["gpus"] else 60,
    shell:
        "python -m dens evaluate {wildcards.experiment:q} {params.options} --threads {threads} "
        "--run-dir {params.run_dir:q} {input.splits:q} > {log:q} 2>&1"
