# Relaxations (IS2RE, Tables 2 and 3): relax the initial structures of the IS2RE test split with a
# trained run's model (no noise, no force input) and score the relaxed energies (dens.relax).


rule relax:
    input:
        data=experiment_data,
        checkpoint=f"{RESULTS}/runs/{{experiment}}/checkpoints/best.pt",
    output:
        metrics=f"{RESULTS}/runs/{{experiment}}/relax/metrics.json",
    params:
        options=cli_options(),
        run_dir=lambda wildcards: run_dir(wildcards.experiment),
    log:
        f"{RESULTS}/logs/relax/{{experiment}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/relax/{{experiment}}.tsv"
    threads: 1
    resources:
        mem_mb=16000,
        gres=lambda wildcards: "gpu:1" if REGISTRY.scale["gpus"] else "",
        runtime=lambda wildcards: 60 * 24 if REGISTRY.scale["gpus"] else 60,
    shell:
        "dens relax {wildcards.experiment:q} {params.options} --threads {threads} "
        "--run-dir {params.run_dir:q} > {log:q} 2>&1"
