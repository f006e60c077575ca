rule aggregate:
    input:
        barriers=per_setting("barriers.parquet"),
        curves=per_setting("curves.parquet"),
        dimensions=per_setting("dimensions.parquet"),
        alignments=per_setting("alignment.parquet"),
        wasserstein=per_setting("wasserstein.parquet"),
        histories=histories_of_study,
    output:
        TABLES,
    params:
        mixed="--allow-mixed-versions" if config["aggregate"]["allow_mixed_versions"] else "",
        resamples=config["correlations"]["bootstrap_resamples"],
        seed=config["correlations"]["bootstrap_seed"],
        confidence=config["correlations"]["confidence"],
    log:
        "results/logs/aggregate.log",
    benchmark:
        "results/benchmarks/aggregate.tsv"
    conda:
        "../envs/lmcpipe.yaml"
    shell:
        "lmcpipe aggregate --barriers {input.barriers:q} --curves {input.curves:q} "
        "--dimensions {input.dimensions:q} --alignments {input.alignments:q} "
        "--histories {input.histories:q} --wasserstein {input.wasserstein:q} "
        "--bootstrap-resamples {params.resamples} --bootstrap-seed {params.seed} "
        "--confidence {params.confidence} --out-dir results/tables {params.mixed} > {log:q} 2>&1"


rule bounds:
    input:
        "results/tables/dimensions.parquet",
    output:
        "results/tables/bounds.parquet",
    params:
        dataset=config["dataset"],
        epsilons=" ".join(map(str, config["bounds"]["epsilons"])),
        estimators=" ".join(config["bounds"]["estimators"]),
    log:
        "results/logs/bounds.log",
    benchmark:
        "results/benchmarks/bounds.tsv"
    conda:
        "../envs/lmcpipe.yaml"
    shell:
        "lmcpipe bounds --dataset {params.dataset} --epsilon {params.epsilons} "
        "--dimensions-table {input:q} --estimators {params.estimators} "
        "--out {output:q} > {log:q} 2>&1"


rule plot:
    input:
        TABLES,
        "results/tables/bounds.parquet",
    output:
        report(
            "results/plots/barrier_vs_width.png",
            caption="../report/barrier_vs_width.rst",
            category="Barriers",
        ),
        report(
            "results/plots/barrier_vs_lr.png",
            caption="../report/barrier_vs_lr.rst",
            category="Barriers",
        ),
        report(
            "results/plots/dimension_vs_lr.png",
            caption="../report/dimension_vs_lr.rst",
            category="Dimensions",
        ),
        report(
            "results/plots/barrier_vs_dimension.png",
            caption="../report/barrier_vs_dimension.rst",
            category="Dimensions",
        ),
        report(
            "results/plots/interpolation_curves.png",
            caption="../report/interpolation_curves.rst",
            category="Barriers",
        ),
        report(
            "results/plots/bounds.png",
            caption="../report/bounds.rst",
            category="Theory",
        ),
    params:
        names=" ".join(STUDY_PLOTS),
    log:
        "results/logs/plot.log",
    benchmark:
        "results/benchmarks/plot.tsv"
    conda:
        "../envs/lmcpipe.yaml"
    shell:
        "lmcpipe plot --tables results/tables --out-dir results/plots {params.names} "
        "> {log:q} 2>&1"
