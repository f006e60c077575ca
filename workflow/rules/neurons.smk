rule extract:
    input:
        "results/runs/{dataset}/depth{depth}/width{width}/lr{lr}/seed{seed}/params.npz",
    output:
        "results/runs/{dataset}/depth{depth}/width{width}/lr{lr}/seed{seed}/neurons.parquet",
    log:
        "results/logs/extract/{dataset}/depth{depth}/width{width}/lr{lr}/seed{seed}.log",
    conda:
        "../envs/lmcpipe.yaml"
    shell:
        "lmcpipe extract {input:q} --out {output:q} > {log:q} 2>&1"


rule dimension:
    input:
        expand("results/runs/{dataset}/depth{depth}/width{width}/lr{lr}/seed{seed}/neurons.parquet", seed=SEEDS, allow_missing=True),
    output:
        "results/runs/{dataset}/depth{depth}/width{width}/lr{lr}/dimensions.parquet",
    params:
        estimators=config["dimension"]["estimators"],
    log:
        "results/logs/dimension/{dataset}/depth{depth}/width{width}/lr{lr}.log",
    benchmark:
        "results/benchmarks/dimension/{dataset}/depth{depth}/width{width}/lr{lr}.tsv"
    conda:
        "../envs/lmcpipe.yaml"
    shell:
        "lmcpipe dimension {input:q} --estimators {params.estimators:q} "
        "--out {output:q} > {log:q} 2>&1"
