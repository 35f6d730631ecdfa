# Data: download -> verify (checksum) -> extract -> aselmdb at scales whose source is `download`
# (config/archives.yaml); generated on the machine at scales whose source is `generate`
# (mini-MD17 from GFN2-xTB MD, mini-OC20/OC22 from EMT relaxations).
from dens.data.download import EXTRACTABLE_FORMATS, load_catalog

ARCHIVES = load_catalog("config/archives.yaml")
DOWNLOADS = "results/downloads"


def archive_file(name):
    return f"{DOWNLOADS}/{name}.{ARCHIVES[name].format}"


def dataset_inputs(wildcards):
    """Downloaded (and extracted) archives a dataset is converted from; none when generated."""
    if REGISTRY.data_settings(wildcards.dataset)["source"] != "download":
        return []
    return [
        f"{DOWNLOADS}/extracted/{name}"
        if archive.format in EXTRACTABLE_FORMATS
        else archive_file(name)
        for name, archive in ARCHIVES.items()
        if wildcards.dataset in archive.dataset and not archive.optional
    ]


rule download_archive:
    output:
        f"{DOWNLOADS}/{{archive}}.{{format}}",
    wildcard_constraints:
        format="|".join(sorted({archive.format for archive in ARCHIVES.values()}, key=len, reverse=True)),
    log:
        f"{DOWNLOADS}/logs/{{archive}}.{{format}}.log",
    benchmark:
        f"{DOWNLOADS}/benchmarks/{{archive}}.{{format}}.tsv"
    threads: 1
    retries: 2
    resources:
        mem_mb=2000,
        runtime=60 * 24,
    shell:
        "dens data download {wildcards.archive} --out {output:q} > {log:q} 2>&1"


rule extract_archive:
    input:
        lambda wildcards: archive_file(wildcards.archive),
    output:
        directory(f"{DOWNLOADS}/extracted/{{archive}}"),
    log:
        f"{DOWNLOADS}/logs/{{archive}}.extract.log",
    benchmark:
        f"{DOWNLOADS}/benchmarks/{{archive}}.extract.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=60 * 12,
    shell:
        "dens data extract {wildcards.archive} --archive {input:q} --out {output:q} > {log:q} 2>&1"


def dataset_threads(wildcards):
    return 1 if REGISTRY.data_settings(wildcards.dataset)["source"] == "generate" else 16


# One rule per distinct split layout (MD17, OC20 S2EF-2M, OC20 All+MD, OC22): a job writes all
# splits of one dataset, then provenance.json last.
_LAYOUTS = {}
for _name, _info in REGISTRY.datasets.items():
    _LAYOUTS.setdefault(tuple(_info["splits"]), []).append(_name)

for _splits, _names in _LAYOUTS.items():

    rule:
        name:
            "prepare_" + (
                REGISTRY.datasets[_names[0]]["family"] if len(_names) > 1 else _names[0]
            ).replace("-", "_")
        input:
            dataset_inputs,
        output:
            splits=[f"{RESULTS}/data/{{dataset}}/{split}.aselmdb" for split in _splits],
            provenance=f"{RESULTS}/data/{{dataset}}/provenance.json",
        wildcard_constraints:
            dataset="|".join(_names),
        params:
            options=cli_options(),
            settings=lambda wildcards: json.dumps(
                REGISTRY.data_settings(wildcards.dataset), sort_keys=True
            ),
        log:
            f"{RESULTS}/logs/data/{{dataset}}.log",
        benchmark:
            f"{RESULTS}/benchmarks/data/{{dataset}}.tsv"
        threads: dataset_threads
        resources:
            mem_mb=lambda wildcards: 4000 if not REGISTRY.scale["gpus"] else 64000,
            runtime=lambda wildcards: 120 if not REGISTRY.scale["gpus"] else 60 * 48,
        shell:
            "dens data prepare {wildcards.dataset} {params.options} --threads {threads} "
            "--out-dir {RESULTS}/data/{wildcards.dataset} {input:q} > {log:q} 2>&1"
