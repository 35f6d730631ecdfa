# Training: one job per experiment at the configured scale (dens.train). A job killed by Slurm
# (SIGTERM at the time limit or on preemption) checkpoints and resumes when resubmitted.


rule train:
    input:
        experiment_data,
    output:
        checkpoint=f"{RESULTS}/runs/{{experiment}}/checkpoints/best.pt",
        log_csv=f"{RESULTS}/runs/{{experiment}}/log.csv",
    params:
        settings=resolved_settings,
        options=cli_options(),
        run_dir=lambda wildcards: run_dir(wildcards.experiment),
    log:
        f"{RESULTS}/logs/train/{{experiment}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/{{experiment}}.tsv"
    threads: 1 if not REGISTRY.scale["gpus"] else 8
    resources:
        mem_mb=lambda wildcards: 4000 if not REGISTRY.scale["gpus"] else 64000,
        nodes=train_resource("nodes"),
        tasks=train_resource("tasks"),
        tasks_per_gpu=train_resource("tasks_per_gpu"),
        gres=train_resource("gres"),
        runtime=train_resource("runtime"),
    shell:
        "dens train {wildcards.experiment:q} {params.options} --threads {threads} "
        "--run-dir {params.run_dir:q} > {log:q} 2>&1"
