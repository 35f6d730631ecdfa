# MD simulations of MD17 molecules with trained models (Table 10): Nose-Hoover NVT at 500 K from
# test configurations; stability and h(r) MAE against the reference data, every split of the
# dataset (dens.simulate; no noise and no force input). Length and number of simulations per
# run: simulation.md17 in config/scales/<scale>.yaml. A killed job resumes its trajectories; with
# max_job_hours set (the Slurm profile) a job stops before its limit and requeues itself
# (dens.pipeline.slurm), and its log keeps every start.


rule simulate:
    input:
        train=split_files("train"),
        val=split_files("val"),
        test=split_files("test"),
        checkpoint=str(paths.run(SCALE, "{experiment}", "{seed}").checkpoint()),
    output:
        metrics=str(paths.run(SCALE, "{experiment}", "{seed}").metrics("simulate")),
    params:
        options=cli_options(),
        settings=lambda wildcards: json.dumps(REGISTRY.scale["simulation"], sort_keys=True),
        continuation=continuation_option,
        unless_requeued=UNLESS_REQUEUED,
    log:
        str(paths.job_log(SCALE, "simulate", "{experiment}/seed{seed}")),
    benchmark:
        str(paths.job_benchmark(SCALE, "simulate", "{experiment}/seed{seed}"))
    conda:
        ENV
    threads: 1
    resources:
        **job_resources("simulate"),
    shell:
        "{params.unless_requeued}: > {log:q}; "
        "python -m dens simulate {wildcards.experiment:q} {params.options} --seed {wildcards.seed} "
        "--threads {threads} --initial {input.test:q} "
        "{params.continuation}{input.train:q} {input.val:q} {input.test:q} "
        ">> {log:q} 2>&1"
