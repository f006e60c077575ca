rule train:
    output:
        checkpoints=expand("results/runs/{dataset}/depth{depth}/width{width}/lr{lr}/seed{seed}/params.npz", seed=SEEDS, allow_missing=True),
        histories=expand("results/runs/{dataset}/depth{depth}/width{width}/lr{lr}/seed{seed}/history.parquet", seed=SEEDS, allow_missing=True),
    params:
        spec=train_spec,
        seeds=" ".join(map(str, SEEDS)),
        out_dir=setting_dir,
        execution=config["training"]["execution"],
        checkpoint_every=config["training"]["checkpoint_every"],
        on_divergence=config["training"]["on_divergence"],
    log:
        "results/logs/train/{dataset}/depth{depth}/width{width}/lr{lr}.log",
    benchmark:
        "results/benchmarks/train/{dataset}/depth{depth}/width{width}/lr{lr}.tsv"
    conda:
        "../envs/lmcpipe.yaml"
    threads: 1
    priority: train_priority
    shell:
        "LMCPIPE_COMPILATION_CACHE=${{LMCPIPE_COMPILATION_CACHE-results/.jax_cache}} "
        "lmcpipe train --spec {params.spec:q} --seeds {params.seeds} "
        "--out-dir {params.out_dir:q} --execution {params.execution} "
        "--checkpoint-every {params.checkpoint_every} "
        "--on-divergence {params.on_divergence} > {log:q} 2>&1"
