rule align:
    input:
        checkpoints_of,
    output:
        "results/runs/{dataset}/depth{depth}/width{width}/lr{lr}/alignment.parquet",
    params:
        methods=config["alignment"]["methods"],
        pairs=config["alignment"]["pairs"],
        seed=config["alignment"]["seed"],
        max_passes=config["alignment"]["max_passes"],
        sinkhorn_reg=config["alignment"]["sinkhorn_reg"],
        sinkhorn_max_iter=config["alignment"]["sinkhorn_max_iter"],
    log:
        "results/logs/align/{dataset}/depth{depth}/width{width}/lr{lr}.log",
    benchmark:
        "results/benchmarks/align/{dataset}/depth{depth}/width{width}/lr{lr}.tsv"
    conda:
        "../envs/lmcpipe.yaml"
    shell:
        "LMCPIPE_COMPILATION_CACHE=${{LMCPIPE_COMPILATION_CACHE-results/.jax_cache}} "
        "lmcpipe align {input:q} --methods {params.methods:q} --pairs {params.pairs} --seed {params.seed} "
        "--max-passes {params.max_passes} --sinkhorn-reg {params.sinkhorn_reg} "
        "--sinkhorn-max-iter {params.sinkhorn_max_iter} --out {output:q} > {log:q} 2>&1"


rule barrier:
    input:
        checkpoints=checkpoints_of,
        alignment="results/runs/{dataset}/depth{depth}/width{width}/lr{lr}/alignment.parquet",
    output:
        curves="results/runs/{dataset}/depth{depth}/width{width}/lr{lr}/curves.parquet",
        barriers="results/runs/{dataset}/depth{depth}/width{width}/lr{lr}/barriers.parquet",
    params:
        points=config["barriers"]["points"],
        train_examples=(
            f"--train-examples {config['barriers']['train_examples']}"
            if config["barriers"]["train_examples"]
            else ""
        ),
    log:
        "results/logs/barrier/{dataset}/depth{depth}/width{width}/lr{lr}.log",
    benchmark:
        "results/benchmarks/barrier/{dataset}/depth{depth}/width{width}/lr{lr}.tsv"
    conda:
        "../envs/lmcpipe.yaml"
    shell:
        "LMCPIPE_COMPILATION_CACHE=${{LMCPIPE_COMPILATION_CACHE-results/.jax_cache}} "
        "lmcpipe barrier {input.checkpoints:q} --alignment {input.alignment:q} "
        "--points {params.points} {params.train_examples} --curves-out {output.curves:q} "
        "--barriers-out {output.barriers:q} > {log:q} 2>&1"


rule wasserstein:
    input:
        checkpoints_of,
    output:
        "results/runs/{dataset}/depth{depth}/width{width}/lr{lr}/wasserstein.parquet",
    params:
        pairs=config["alignment"]["pairs"],
    log:
        "results/logs/wasserstein/{dataset}/depth{depth}/width{width}/lr{lr}.log",
    benchmark:
        "results/benchmarks/wasserstein/{dataset}/depth{depth}/width{width}/lr{lr}.tsv"
    conda:
        "../envs/lmcpipe.yaml"
    shell:
        "LMCPIPE_COMPILATION_CACHE=${{LMCPIPE_COMPILATION_CACHE-results/.jax_cache}} "
        "lmcpipe wasserstein {input:q} --pairs {params.pairs} --out {output:q} > {log:q} 2>&1"
