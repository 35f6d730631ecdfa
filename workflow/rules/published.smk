# The published EquiformerV2 + DeNS checkpoints (config/published.yaml, dens.pipeline.published): target
# `published`. Each checkpoint is downloaded by download_archive (config/archives.yaml, checked
# before its digest is pinned; at scales other than paper into results/{scale}/downloads, from
# config `mirror` where set), imported as a run under results/{scale}/published/<name>/ (never
# mixed with trained runs), scored on its S2EF validation splits, relaxed on its dataset's IS2RE
# validation splits (role relax_val) with its experiment's relax settings at the scale, and its
# S2EF test submission written, by the commands trained runs use; the table `published` sets the
# numbers beside the paper's. A failed download stops only the jobs of that checkpoint: the
# others' outputs stay.


rule import_checkpoint:
    input:
        checkpoint=lambda wildcards: archive_file(wildcards.published),
        reference=published_reference,
        # the dataset prepared: the import records its train split's elements (dens.pipeline.checkpoint_import)
        provenance=lambda wildcards: str(
            paths.dataset(SCALE, published_checkpoint(wildcards).dataset).provenance
        ),
    output:
        checkpoint=str(paths.published_run(SCALE, "{published}").published("checkpoint")),
    wildcard_constraints:
        published="|".join(PUBLISHED.checkpoints),
    params:
        options=cli_options(),
        experiment=lambda wildcards: published_checkpoint(wildcards).experiment,
        reference=published_reference_option,
        run_dir=published_dir,
    log:
        str(paths.job_log(SCALE, "import_checkpoint", "{published}")),
    benchmark:
        str(paths.job_benchmark(SCALE, "import_checkpoint", "{published}"))
    conda:
        ENV
    threads: 1
    resources:
        **job_resources("import_checkpoint"),
    shell:
        "python -m dens import-checkpoint {input.checkpoint:q} {params.experiment:q} "
        "{params.options} {params.reference}--run-dir {params.run_dir:q} > {log:q} 2>&1"


rule evaluate_published:
    input:
        splits=published_splits("evaluate"),
        checkpoint=str(paths.published_run(SCALE, "{published}").published("checkpoint")),
    output:
        metrics=str(paths.published_run(SCALE, "{published}").published("evaluate")),
    wildcard_constraints:
        published="|".join(PUBLISHED.checkpoints),
    params:
        options=cli_options(),
        experiment=lambda wildcards: published_checkpoint(wildcards).experiment,
        run_dir=published_dir,
    log:
        str(paths.job_log(SCALE, "evaluate_published", "{published}")),
    benchmark:
        str(paths.job_benchmark(SCALE, "evaluate_published", "{published}"))
    conda:
        ENV
    threads: 1
    resources:
        **job_resources("evaluate"),
    shell:
        "python -m dens evaluate {params.experiment:q} {params.options} --threads {threads} "
        "--run-dir {params.run_dir:q} {input.splits:q} > {log:q} 2>&1"


rule relax_published:
    input:
        splits=published_splits("relax_val"),
        checkpoint=str(paths.published_run(SCALE, "{published}").published("checkpoint")),
    output:
        metrics=str(paths.published_run(SCALE, "{published}").published("relax")),
        submission=str(paths.published_run(SCALE, "{published}").published("relax_submission")),
    wildcard_constraints:
        published="|".join(name for name, c in PUBLISHED.checkpoints.items() if c.relax),
    params:
        options=cli_options(),
        experiment=lambda wildcards: published_checkpoint(wildcards).experiment,
        run_dir=published_dir,
        relax=lambda wildcards: json.dumps(
            REGISTRY.relax_settings(published_checkpoint(wildcards).experiment), sort_keys=True
        ),
        continuation=continuation_option,
        unless_requeued=UNLESS_REQUEUED,
    log:
        str(paths.job_log(SCALE, "relax_published", "{published}")),
    benchmark:
        str(paths.job_benchmark(SCALE, "relax_published", "{published}"))
    conda:
        ENV
    threads: 1
    resources:
        **job_resources("relax"),
    shell:
        "{params.unless_requeued}: > {log:q}; "
        "python -m dens relax {params.experiment:q} {params.options} --threads {threads} "
        "{params.continuation}--run-dir {params.run_dir:q} {input.splits:q} >> {log:q} 2>&1"


rule submission_published:
    input:
        splits=published_splits("test"),
        checkpoint=str(paths.published_run(SCALE, "{published}").published("checkpoint")),
    output:
        submission=str(paths.published_run(SCALE, "{published}").published("submission")),
        metrics=str(paths.published_run(SCALE, "{published}").published("test")),
    wildcard_constraints:
        published="|".join(name for name, c in PUBLISHED.checkpoints.items() if c.submission),
    params:
        options=cli_options(),
        experiment=lambda wildcards: published_checkpoint(wildcards).experiment,
        run_dir=published_dir,
    log:
        str(paths.job_log(SCALE, "submission_published", "{published}")),
    benchmark:
        str(paths.job_benchmark(SCALE, "submission_published", "{published}"))
    conda:
        ENV
    threads: 1
    resources:
        **job_resources("submission"),
    shell:
        "python -m dens submission {params.experiment:q} {params.options} --threads {threads} "
        "--run-dir {params.run_dir:q} {input.splits:q} > {log:q} 2>&1"


PUBLISHED_TABLE_FILES = [
    str(paths.table_file(SCALE, "published", ext)) for ext in ("csv", "md", "tex")
]


rule published_table:
    input:
        [str(path) for path in published_table_inputs(REGISTRY, PUBLISHED)],
    output:
        csv=PUBLISHED_TABLE_FILES[0],
        md=PUBLISHED_TABLE_FILES[1],
        tex=PUBLISHED_TABLE_FILES[2],
    params:
        options=cli_options(),
        settings=json.dumps(read_yaml(Path(workflow.basedir) / "config/published.yaml")),
        out_dir=lambda wildcards, output: str(Path(output.csv).parent),
    log:
        str(paths.job_log(SCALE, "tables", "published")),
    conda:
        ENV
    threads: 1
    resources:
        **job_resources("published_table"),
    shell:
        "python -m dens table published {params.options} --out-dir {params.out_dir:q} "
        "> {log:q} 2>&1"


rule published:
    input:
        PUBLISHED_TABLE_FILES,
        published_files("submission"),
        published_files("relax_submission"),
