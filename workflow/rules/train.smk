# Training: one job per experiment and training seed at the configured scale (dens.train),
# reading the dataset's train split and its first val split. A job killed by Slurm (SIGTERM at the
# time limit or on preemption) checkpoints and resumes when resubmitted; a rerun resumes only if
# the run was started with the same experiment, data and code, else the old run is moved aside.
# Snakemake deletes the declared outputs before a rerun; each has a second name in the run's .kept/
# (dens.runs.keep_outputs), from which a run moved aside gets them back: it keeps everything.
# A multi-GPU run (resources.gpus > 1 in config/experiments.yaml, GPU scales) starts one process
# per GPU with srun across its nodes (train_launcher), so it needs the Slurm profile; by hand on
# one node: torchrun --standalone --nproc-per-node N -m dens train ... (dens.distributed).
# With max_job_hours set (the Slurm profile), a job asks for at most that; a longer run stops before
# the limit, saves last.pt and requeues its job, which resumes there (dens.pipeline.slurm); the log keeps
# every start of the job (it is emptied only at the first).
# Where the scale sets evaluate_in_train_job (mini, smoke), the job also scores the run's best
# checkpoint on the dataset's `evaluate` splits into metrics.json (dens train --evaluate), which
# saves a process start per run; elsewhere the evaluate rule (evaluate.smk) does it in a job of
# its own.


rule train:
    input:
        train=split_files("train"),
        val=lambda wildcards: split_files("val")(wildcards)[:1],
        references=reference_files,
        **({"evaluate": split_files("evaluate")} if EVALUATE_IN_TRAIN_JOB else {}),
    output:
        checkpoint=str(paths.run(SCALE, "{experiment}", "{seed}").checkpoint()),
        log_csv=str(paths.run(SCALE, "{experiment}", "{seed}").log),
        **(
            {"metrics": str(paths.run(SCALE, "{experiment}", "{seed}").metrics("evaluate"))}
            if EVALUATE_IN_TRAIN_JOB
            else {}
        ),
    params:
        settings=resolved_settings,
        options=cli_options(),
        launch=train_launcher,
        continuation=continuation_option,
        unless_requeued=UNLESS_REQUEUED,
        time_plan=time_plan,
        evaluate=evaluate_option,
    message:
        "train {wildcards.experiment} seed {wildcards.seed}: nodes={resources.nodes} "
        "gres={resources.gres} tasks={resources.tasks}; {params.time_plan}"
    log:
        str(paths.job_log(SCALE, "train", "{experiment}/seed{seed}")),
    benchmark:
        str(paths.job_benchmark(SCALE, "train", "{experiment}/seed{seed}"))
    conda:
        ENV
    threads: 1 if not REGISTRY.scale["gpus"] else 8
    priority: longest_first
    resources:
        mem_mb=train_resource("mem_mb"),
        nodes=train_resource("nodes"),
        tasks=train_resource("tasks"),
        tasks_per_gpu=train_resource("tasks_per_gpu"),
        gres=train_resource("gres"),
        runtime=lambda wildcards: job_minutes(train_resource("runtime")(wildcards)),
        mpi=train_resource("mpi"),
        # --cpus-per-task for the job and for its srun (not Slurm's --cpus-per-gpu, which srun
        # would inherit and refuse beside --cpus-per-task).
        cpus_per_task=lambda wildcards, threads: threads,
    shell:
        # The log gets everything; the console (stdout) one line per epoch with the time left
        # (rank 0's alone when several processes train).
        "{params.unless_requeued}: > {log:q}; "
        "{params.launch}python -m dens train {wildcards.experiment:q} {params.options} "
        "--seed {wildcards.seed} --threads {threads} --train {input.train:q} --val {input.val:q} "
        "{params.continuation}{params.evaluate}2>> {log:q} | tee -a {log:q}"
