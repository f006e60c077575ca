rule convergence:
    input:
        convergence_checkpoints,
    output:
        samples="results/tables/convergence.parquet",
        fits="results/tables/convergence_fit.parquet",
    params:
        dataset=config["dataset"],
        widths=" ".join(map(str, config["convergence"]["widths"])),
        repeats=config["convergence"]["repeats"],
        seed=config["convergence"]["seed"],
        sources=" ".join(
            source for source in config["convergence"]["sources"] if source != "trained"
        ),
        subspace_dimensions=" ".join(
            map(str, config["convergence"]["subspace_dimensions"])
        ),
        estimator=config["convergence"]["estimator"],
        confidence=config["convergence"]["confidence"],
    log:
        "results/logs/convergence.log",
    benchmark:
        "results/benchmarks/convergence.tsv"
    conda:
        "../envs/lmcpipe.yaml"
    shell:
        "lmcpipe convergence {input:q} --dataset {params.dataset} --widths {params.widths} "
        "--repeats {params.repeats} --seed {params.seed} --sources {params.sources} "
        "--subspace-dimensions {params.subspace_dimensions} --estimator {params.estimator} "
        "--confidence {params.confidence} --out {output.samples:q} --fit-out {output.fits:q} "
        "> {log:q} 2>&1"


rule plot_convergence:
    input:
        "results/tables/convergence.parquet",
        "results/tables/convergence_fit.parquet",
    output:
        report(
            "results/plots/convergence.png",
            caption="../report/convergence.rst",
            category="Convergence",
        ),
    log:
        "results/logs/plot_convergence.log",
    benchmark:
        "results/benchmarks/plot_convergence.tsv"
    conda:
        "../envs/lmcpipe.yaml"
    shell:
        "lmcpipe plot --tables results/tables --out-dir results/plots convergence > {log:q} 2>&1"
