# Data: download -> verify (checksum) -> extract -> aselmdb at scales whose source is `download`
# (config/archives.yaml); generated on the machine at scales whose source is `generate`
# (mini-MD17 from GFN2-xTB MD, mini-OC20/OC22 from EMT relaxations). Downloads go to
# results/downloads at the paper scale, results/{scale}/downloads at others (dens.pipeline.paths
# downloads_dir: the published checkpoints' jobs download at every scale), from the owners' URLs
# or, with config `mirror`, the same paths on a mirror.


rule download_archive:
    output:
        f"{DOWNLOADS}/{{archive}}.{{format}}",
    wildcard_constraints:
        format="|".join(sorted({archive.format for archive in ARCHIVES.values()}, key=len, reverse=True)),
    log:
        f"{DOWNLOADS}/logs/{{archive}}.{{format}}.log",
    benchmark:
        f"{DOWNLOADS}/benchmarks/{{archive}}.{{format}}.tsv"
    conda:
        ENV
    threads: 1
    retries: 2
    params:
        catalog=CATALOG_OPTION,
    resources:
        **job_resources("download"),
    shell:
        "python -m dens data download {wildcards.archive} --out {output:q} {MIRROR_OPTION}"
        "{params.catalog}> {log:q} 2>&1"


rule extract_archive:
    input:
        lambda wildcards: archive_file(wildcards.archive),
    output:
        directory(f"{DOWNLOADS}/extracted/{{archive}}"),
    log:
        f"{DOWNLOADS}/logs/{{archive}}.extract.log",
    benchmark:
        f"{DOWNLOADS}/benchmarks/{{archive}}.extract.tsv"
    conda:
        ENV
    threads: 1
    params:
        catalog=CATALOG_OPTION,
    resources:
        **job_resources("extract"),
    shell:
        "python -m dens data extract {wildcards.archive} --archive-path {input:q} --out {output:q} "
        "{params.catalog}> {log:q} 2>&1"


# Paper-scale OC20/OC22: one conversion job per group of an extracted archive's source files
# (group g of G, contiguous in the sorted file list; G = convert_groups: the archive's published
# frames over convert_frames_per_job), each writing its shards under the dataset's .work/<archive>/
# and a record of them; finished files are skipped when a job reruns (dens.data.oc_convert). The
# records are temp(): once the dataset is prepared they are gone and not a reason to rerun.
_CONVERTED = sorted(
    name
    for name, archive in ARCHIVES.items()
    if archive.format in EXTRACTABLE_FORMATS and not archive.optional
)


rule convert_group:
    input:
        f"{DOWNLOADS}/extracted/{{archive}}",
    output:
        temp(str(paths.dataset(SCALE, "{dataset}").group_record("{archive}", "{group}"))),
    wildcard_constraints:
        archive="|".join(_CONVERTED),
        group=r"\d+",
    params:
        options=cli_options(),
        groups=lambda wildcards: convert_groups(wildcards.archive),
        settings=convert_group_settings,
        out_dir=lambda wildcards: str(paths.dataset(SCALE, wildcards.dataset).path),
    log:
        str(paths.job_log(SCALE, "convert", "{dataset}/{archive}.{group}")),
    benchmark:
        str(paths.job_benchmark(SCALE, "convert", "{dataset}/{archive}.{group}"))
    conda:
        ENV
    threads: 1
    priority: longest_first
    resources:
        **job_resources("convert"),
    shell:
        "python -m dens data convert-group {wildcards.dataset} {input:q} --group {wildcards.group} "
        "--groups {params.groups} --out-dir {params.out_dir:q} {params.options} > {log:q} 2>&1"


# One rule per distinct split layout (MD17, OC20 S2EF-2M, OC20 All+MD, OC22): a job writes all
# split folders of one dataset (at the paper scale for OC20/OC22: moves the conversion jobs'
# shards into them), their manifests, then provenance.json last.
_LAYOUTS = {}
for _name in REGISTRY.datasets:
    _LAYOUTS.setdefault(tuple(REGISTRY.split_names(_name)), []).append(_name)

for _splits, _names in _LAYOUTS.items():

    rule:
        name:
            "prepare_" + (
                REGISTRY.datasets[_names[0]]["family"] if len(_names) > 1 else _names[0]
            ).replace("-", "_")
        input:
            dataset_inputs,
        output:
            splits=[
                directory(str(paths.dataset(SCALE, "{dataset}").split(split))) for split in _splits
            ],
            provenance=str(paths.dataset(SCALE, "{dataset}").provenance),
        wildcard_constraints:
            dataset="|".join(_names),
        params:
            options=cli_options(),
            settings=lambda wildcards: json.dumps(
                REGISTRY.data_settings(wildcards.dataset), sort_keys=True
            ),
            out_dir=lambda wildcards: str(paths.dataset(SCALE, wildcards.dataset).path),
        log:
            str(paths.job_log(SCALE, "data", "{dataset}")),
        benchmark:
            str(paths.job_benchmark(SCALE, "data", "{dataset}"))
        conda:
            ENV
        threads: 1
        priority: longest_first
        resources:
            **job_resources("prepare"),
        shell:
            # the inputs right after the dataset: argparse takes a list positional in one piece
            "python -m dens data prepare {wildcards.dataset} {input:q} {params.options} "
            "--threads {threads} --out-dir {params.out_dir:q} > {log:q} 2>&1"
