rule align:
    input:
        checkpoints_of,
    output:
        "results/runs/{dataset}/depth{depth}/width{width}/lr{lr}/alignment.parquet",
    params:
        methods=" ".join(config["alignment"]["methods"]),
        pairs=config["alignment"]["pairs"],
        seed=config["alignment"]["seed"],
        max_passes=config["alignment"]["max_passes"],
    log:
        "results/logs/align/{dataset}/depth{depth}/width{width}/lr{lr}.log",
    benchmark:
        "results/benchmarks/align/{dataset}/depth{depth}/width{width}/lr{lr}.tsv"
    conda:
        "../envs/lmcpipe.yaml"
    shell:
        "lmcpipe align {input:q} --methods {params.methods} --pairs {params.pairs} --seed {params.seed} "
        "--max-passes {params.max_passes} --out {output:q} > {log:q} 2>&1"


rule barrier:
    input:
        checkpoints=checkpoints_of,
        alignment="results/runs/{dataset}/depth{depth}/width{width}/lr{lr}/alignment.parquet",
    output:
        curves="results/runs/{dataset}/depth{depth}/width{width}/lr{lr}/curves.parquet",
        barriers="results/runs/{dataset}/depth{depth}/width{width}/lr{lr}/barriers.parquet",
    params:
        points=config["barriers"]["points"],
    log:
        "results/logs/barrier/{dataset}/depth{depth}/width{width}/lr{lr}.log",
    benchmark:
        "results/benchmarks/barrier/{dataset}/depth{depth}/width{width}/lr{lr}.tsv"
    conda:
        "../envs/lmcpipe.yaml"
    shell:
        "lmcpipe barrier {input.checkpoints:q} --alignment {input.alignment:q} "
        "--points {params.points} --curves-out {output.curves:q} "
        "--barriers-out {output.barriers:q} > {log:q} 2>&1"
