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
    log:
        "results/logs/aggregate.log",
    conda:
        "../envs/lmcpipe.yaml"
    shell:
        "lmcpipe aggregate --barriers {input.barriers:q} --curves {input.curves:q} "
        "--dimensions {input.dimensions:q} --alignments {input.alignments:q} "
        "--histories {input.histories:q} --wasserstein {input.wasserstein:q} "
        "--out-dir results/tables {params.mixed} > {log:q} 2>&1"


rule plot:
    input:
        TABLES,
    output:
        PLOTS,
    log:
        "results/logs/plot.log",
    conda:
        "../envs/lmcpipe.yaml"
    shell:
        "lmcpipe plot --tables results/tables --out-dir results/plots > {log:q} 2>&1"
