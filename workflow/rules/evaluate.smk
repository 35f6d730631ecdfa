# Evaluation: MAEs of the best-validation (EMA) weights on the splits the dataset's `evaluate`
# role names (MD17: test; OC20 and OC22: the val splits), written to
# results/{scale}/runs/{experiment}/seed{seed}/metrics.json (dens.evaluate), by a job of its own,
# or by the training job where the scale sets evaluate_in_train_job. For OC20/OC22 runs the
# `submission` rule predicts the S2EF test splits and writes test/submission.npz, the file the
# evaluation server takes, and test/metrics.json, scored locally where the test rows have labels
# (the generated data of scales mini and smoke); the server's results go into
# test/server_results.json by hand (format: dens.pipeline.submission) and fill the tables' test columns.


if not EVALUATE_IN_TRAIN_JOB:  # else the train job writes metrics.json (train.smk)

    rule evaluate:
        input:
            splits=split_files("evaluate"),
            checkpoint=str(paths.run(SCALE, "{experiment}", "{seed}").checkpoint()),
            log_csv=str(paths.run(SCALE, "{experiment}", "{seed}").log),
        output:
            metrics=str(paths.run(SCALE, "{experiment}", "{seed}").metrics("evaluate")),
        params:
            options=cli_options(),
        log:
            str(paths.job_log(SCALE, "evaluate", "{experiment}/seed{seed}")),
        benchmark:
            str(paths.job_benchmark(SCALE, "evaluate", "{experiment}/seed{seed}"))
        conda:
            ENV
        threads: 1
        resources:
            **job_resources("evaluate"),
        shell:
            "python -m dens evaluate {wildcards.experiment:q} {params.options} --seed {wildcards.seed} "
            "--threads {threads} "
            "{input.splits:q} > {log:q} 2>&1"


rule submission:
    input:
        splits=split_files("test"),
        checkpoint=str(paths.run(SCALE, "{experiment}", "{seed}").checkpoint()),
    output:
        submission=str(paths.run(SCALE, "{experiment}", "{seed}").submission()),
        metrics=str(paths.run(SCALE, "{experiment}", "{seed}").metrics("test")),
    params:
        options=cli_options(),
    log:
        str(paths.job_log(SCALE, "submission", "{experiment}/seed{seed}")),
    benchmark:
        str(paths.job_benchmark(SCALE, "submission", "{experiment}/seed{seed}"))
    conda:
        ENV
    threads: 1
    resources:
        **job_resources("submission"),
    shell:
        "python -m dens submission {wildcards.experiment:q} {params.options} "
        "--seed {wildcards.seed} --threads {threads} "
        "{input.splits:q} > {log:q} 2>&1"
