rule extract:
    input:
        checkpoints_of,
    output:
        expand(
            "results/runs/{dataset}/depth{depth}/width{width}/lr{lr}/seed{seed}/neurons.parquet",
            seed=SEEDS,
            allow_missing=True,
        ),
    log:
        "results/logs/extract/{dataset}/depth{depth}/width{width}/lr{lr}.log",
    conda:
        "../envs/lmcpipe.yaml"
    shell:
        "lmcpipe extract {input:q} --out {output:q} > {log:q} 2>&1"


rule dimension:
    input:
        checkpoints_of,
    output:
        "results/runs/{dataset}/depth{depth}/width{width}/lr{lr}/dimensions.parquet",
    params:
        estimators=config["dimension"]["estimators"],
        geometries=config["dimension"]["geometries"],
        subsamples=config["dimension"]["subsamples"],
        subsample_fraction=config["dimension"]["subsample_fraction"],
        seed=config["dimension"]["seed"],
    log:
        "results/logs/dimension/{dataset}/depth{depth}/width{width}/lr{lr}.log",
    benchmark:
        "results/benchmarks/dimension/{dataset}/depth{depth}/width{width}/lr{lr}.tsv"
    conda:
        "../envs/lmcpipe.yaml"
    shell:
        "LMCPIPE_COMPILATION_CACHE=${{LMCPIPE_COMPILATION_CACHE-results/.jax_cache}} "
        "lmcpipe dimension {input:q} --estimators {params.estimators:q} "
        "--geometries {params.geometries:q} --subsamples {params.subsamples} "
        "--subsample-fraction {params.subsample_fraction} --seed {params.seed} "
        "--out {output:q} > {log:q} 2>&1"
