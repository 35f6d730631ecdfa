# Relaxations (IS2RE, Tables 2 and 3): relax the initial structures of the dataset's relax splits
# with a trained run's model (no noise, no force input), a batch of systems at a time with the
# batched L-BFGS (the experiment's `relax` settings in config/experiments.yaml under the scale's
# `relax`: dens.pipeline.registry.Registry.relax_settings), and score the relaxed energies or write the
# evaluation server's file (dens.pipeline.is2re). A killed job resumes when run again: the
# systems it finished (relax/systems.jsonl) are not relaxed again. With max_job_hours set (the
# Slurm profile) a job stops before its limit and requeues itself (dens.pipeline.slurm); its log keeps
# every start.


rule relax:
    input:
        splits=split_files("relax"),
        checkpoint=str(paths.run(SCALE, "{experiment}", "{seed}").checkpoint()),
    output:
        metrics=str(paths.run(SCALE, "{experiment}", "{seed}").metrics("relax")),
        submission=str(paths.run(SCALE, "{experiment}", "{seed}").submission("relax")),
    params:
        options=cli_options(),
        relax=lambda wildcards: json.dumps(
            REGISTRY.relax_settings(wildcards.experiment), sort_keys=True
        ),
        continuation=continuation_option,
        unless_requeued=UNLESS_REQUEUED,
    log:
        str(paths.job_log(SCALE, "relax", "{experiment}/seed{seed}")),
    benchmark:
        str(paths.job_benchmark(SCALE, "relax", "{experiment}/seed{seed}"))
    conda:
        ENV
    threads: 1
    resources:
        **job_resources("relax"),
    shell:
        "{params.unless_requeued}: > {log:q}; "
        "python -m dens relax {wildcards.experiment:q} {params.options} --seed {wildcards.seed} "
        "--threads {threads} {params.continuation}"
        "{input.splits:q} >> {log:q} 2>&1"
