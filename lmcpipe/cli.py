"""The ``lmcpipe`` command: one subcommand per step of a study.

Each subcommand reads and writes files only, so the same step runs from the
shell, from Python and from the Snakemake workflow. Errors in the input
(a missing or corrupt file, an invalid setting) end the command with a
one-line message and exit status 2.

When the environment variable ``LMCPIPE_COMPILATION_CACHE`` names a folder,
compiled JAX programs are kept there for later runs (see
:mod:`lmcpipe.runtime`). When ``LMCPIPE_WORKER`` names a running worker, the
``lmcpipe`` command runs in a child of that process, which has imported the
dependencies already (see :mod:`lmcpipe.client` and :mod:`lmcpipe.worker`).
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
import time
from pathlib import Path

from lmcpipe.runtime import enable_compilation_cache

log = logging.getLogger("lmcpipe")


def _read_spec(text: str):
    from lmcpipe.spec import TrainSpec

    if text.startswith("@"):
        path = Path(text[1:])
        try:
            text = path.read_text()
        except OSError as error:
            raise ValueError(f"{path}: cannot read training spec ({error.strerror})") from None
    return TrainSpec.from_json(text)


def cmd_train(args) -> None:
    from lmcpipe.training import train_to_files

    vectorize = {"auto": "auto", "vmap": True, "loop": False}[args.execution]
    train_to_files(_read_spec(args.spec), args.seeds, args.out_dir, vectorize,
                   args.checkpoint_every, args.on_divergence)


def cmd_extract(args) -> None:
    from lmcpipe.neurons import extract_to_file

    if len(args.out) != len(args.checkpoints):
        raise ValueError(
            f"got {len(args.checkpoints)} checkpoint(s) but {len(args.out)} --out file(s); "
            "give one output per checkpoint, in the same order"
        )
    for checkpoint, out in zip(args.checkpoints, args.out):
        extract_to_file(checkpoint, out)


def cmd_dimension(args) -> None:
    from lmcpipe.dimension import DimensionOptions, dimensions_to_file

    options = DimensionOptions(
        estimators=tuple(args.estimators), geometries=tuple(args.geometries),
        subsamples=args.subsamples, subsample_fraction=args.subsample_fraction, seed=args.seed,
    )
    dimensions_to_file(args.checkpoints, args.out, options)


def cmd_align(args) -> None:
    from lmcpipe.alignment import AlignOptions, align_to_file

    options = AlignOptions(
        seed=args.seed, max_passes=args.max_passes, sinkhorn_reg=args.sinkhorn_reg,
        sinkhorn_max_iter=args.sinkhorn_max_iter,
    )
    align_to_file(args.checkpoints, args.methods, args.out, options, args.pairs)


def cmd_wasserstein(args) -> None:
    from lmcpipe.wasserstein import wasserstein_to_file

    wasserstein_to_file(args.checkpoints, args.out, args.pairs)


def cmd_convergence(args) -> None:
    from lmcpipe.convergence import ConvergenceOptions, convergence_to_files

    options = ConvergenceOptions(
        widths=tuple(args.widths), repeats=args.repeats, seed=args.seed, sources=tuple(args.sources),
        subspace_dimensions=tuple(args.subspace_dimensions), estimator=args.estimator,
        confidence=args.confidence,
    )
    convergence_to_files(args.out, args.fit_out, options, args.input_dim, args.dataset, args.checkpoints)


def cmd_barrier(args) -> None:
    from lmcpipe.barriers import barriers_to_files

    barriers_to_files(args.checkpoints, args.alignment, args.curves_out, args.barriers_out,
                      args.points, args.train_examples)


def cmd_aggregate(args) -> None:
    from lmcpipe.aggregate import TABLES, aggregate

    written = aggregate({kind: getattr(args, kind) for kind in TABLES}, args.out_dir,
                        args.bootstrap_resamples, args.bootstrap_seed, args.confidence,
                        args.allow_mixed_versions)
    for name, path in written.items():
        log.info("wrote %s table %s", name, path)


def cmd_plot(args) -> None:
    from lmcpipe.plots import STUDY_PLOTS, plot_all

    for path in plot_all(args.tables, args.out_dir, args.names or STUDY_PLOTS):
        log.info("wrote %s", path)


def cmd_summary(args) -> None:
    import pandas as pd

    from lmcpipe.aggregate import summary

    barriers = pd.read_parquet(Path(args.tables) / "barriers.parquet")
    with pd.option_context("display.width", 160, "display.precision", 4):
        print(f"mean {args.split} {args.metric} barrier over pairs, by width and method")
        print(summary(barriers, args.split, args.metric).to_string(float_format="{:.4f}".format))


def cmd_bounds(args) -> None:
    from lmcpipe.theory import bounds_to_file, study_bounds_to_file

    input_dim = args.input_dim
    if input_dim is None and args.dataset is not None:
        from lmcpipe.data import load_dataset

        input_dim = load_dataset(args.dataset).input_dim
    if input_dim is None:
        raise ValueError("no input dimension: give --input-dim or --dataset")
    shared = {"epsilons": args.epsilon, "input_dim": input_dim, "T": args.T,
              "constant": args.constant, "log_power": args.log_power, "delta": args.delta}
    if args.dimensions_table is not None:
        if args.dimensions is not None:
            raise ValueError("give either --dimensions or --dimensions-table, not both")
        table = study_bounds_to_file(args.dimensions_table, args.out, estimators=args.estimators, **shared)
    else:
        table = bounds_to_file(args.out, depth=args.depth, dimensions=args.dimensions, **shared)
    print("log10 of the width each bound requires ('-': not applicable; inf: beyond the float range)")
    print(table.to_pandas().to_string(index=False, na_rep="-", float_format=lambda value: f"{value:.6g}"))
    if args.out is not None:
        log.info("wrote %s", args.out)


def cmd_data_fetch(args) -> None:
    from lmcpipe.data import DEFAULT_DATA_ROOT
    from lmcpipe.fetch import fetch_dataset

    directory = args.to if args.to is not None else DEFAULT_DATA_ROOT / args.name
    fetch_dataset(args.name, directory)


@functools.lru_cache(maxsize=1)
def build_parser() -> argparse.ArgumentParser:
    """Return the command line's parser, built once per process (and before the worker forks)."""
    from lmcpipe import __version__

    parser = argparse.ArgumentParser(prog="lmcpipe", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"lmcpipe {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="train the seeds of one setting")
    train.add_argument("--spec", required=True,
                       help="training spec as a JSON object, or @FILE to read it from FILE")
    train.add_argument("--seeds", type=int, nargs="+", required=True, help="seed indices to train")
    train.add_argument("--out-dir", required=True, type=Path,
                       help="folder that receives seed<k>/params.npz and seed<k>/history.parquet")
    train.add_argument("--execution", choices=["auto", "vmap", "loop"], default="auto",
                       help="train the seeds in one program with jax.vmap, or one after "
                       "another (default: auto, which is vmap on a GPU or TPU and, on a CPU, "
                       "vmap for small models and loop for large ones)")
    train.add_argument("--checkpoint-every", type=int, default=1,
                       help="save the resumable training state every N epochs (default: 1)")
    train.add_argument("--on-divergence", choices=["exclude", "error"], default="exclude",
                       help="record a seed whose loss becomes NaN or infinite as diverged "
                       "and go on (exclude), or stop with an error (error)")
    train.set_defaults(run=cmd_train)

    extract = commands.add_parser("extract", help="write the neuron table of each checkpoint")
    extract.add_argument("checkpoints", nargs="+", type=Path, metavar="CHECKPOINT")
    extract.add_argument("--out", required=True, nargs="+", type=Path,
                         help="one neuron table (Parquet) per checkpoint, in the same order")
    extract.set_defaults(run=cmd_extract)

    from lmcpipe.dimension import ESTIMATORS, GEOMETRIES

    dimension = commands.add_parser(
        "dimension", help="estimate the dimension of each hidden layer of the given checkpoints")
    dimension.add_argument("checkpoints", type=Path, nargs="+")
    dimension.add_argument("--out", required=True, type=Path, help="dimension table (Parquet)")
    dimension.add_argument("--estimators", nargs="+", default=list(ESTIMATORS), choices=ESTIMATORS,
                           help="dimension estimators (default: all)")
    dimension.add_argument("--geometries", nargs="+", default=list(GEOMETRIES), choices=GEOMETRIES,
                           help="geometries to estimate in (default: all)")
    dimension.add_argument("--subsamples", type=int, default=10,
                           help="random subsets behind each estimate's spread; 0 skips the spread "
                           "(default: 10)")
    dimension.add_argument("--subsample-fraction", type=float, default=0.8,
                           help="share of the points in each subset, in (0, 1) (default: 0.8)")
    dimension.add_argument("--seed", type=int, default=0, help="seed of the subsets (default: 0)")
    dimension.set_defaults(run=cmd_dimension)

    align = commands.add_parser("align", help="align pairs of checkpoints of one setting")
    align.add_argument("checkpoints", type=Path, nargs="+")
    align.add_argument("--methods", nargs="+", default=["naive", "wm"],
                       help="alignment methods: naive, wm, wm_incoming, wm_cov, am, am_corr, sinkhorn")
    align.add_argument("--out", required=True, type=Path, help="alignment table (Parquet)")
    align.add_argument("--seed", type=int, default=0, help="seed of the random layer order")
    align.add_argument("--max-passes", type=int, default=100,
                       help="pass limit of weight matching's coordinate descent")
    align.add_argument("--sinkhorn-reg", type=float, default=0.01,
                       help="entropic regulariser of the sinkhorn method, relative to the "
                       "largest squared distance between two neurons")
    align.add_argument("--sinkhorn-max-iter", type=int, default=100_000,
                       help="iteration limit of the sinkhorn method")
    align.add_argument("--pairs", choices=["all", "disjoint"], default="all",
                       help="align every unordered pair of seeds (all), or seeds 2k and "
                       "2k+1 only (disjoint: each network in one pair)")
    align.set_defaults(run=cmd_align)

    wasserstein = commands.add_parser(
        "wasserstein", help="W2 distances between the neuron measures of every pair")
    wasserstein.add_argument("checkpoints", type=Path, nargs="+")
    wasserstein.add_argument("--out", required=True, type=Path, help="Wasserstein table (Parquet)")
    wasserstein.add_argument("--pairs", choices=["all", "disjoint"], default="all",
                             help="pairs of seeds to compare, as for align")
    wasserstein.set_defaults(run=cmd_wasserstein)

    barrier = commands.add_parser("barrier", help="interpolation curves and barriers of aligned pairs")
    barrier.add_argument("checkpoints", type=Path, nargs="+")
    barrier.add_argument("--alignment", required=True, type=Path, help="alignment table (Parquet)")
    barrier.add_argument("--curves-out", required=True, type=Path)
    barrier.add_argument("--barriers-out", required=True, type=Path)
    barrier.add_argument("--points", type=int, default=25, help="odd number of values of t")
    barrier.add_argument("--train-examples", type=int, default=None,
                         help="evaluate the train curve on this many training examples, "
                         "drawn once with seed 0 (default: all)")
    barrier.set_defaults(run=cmd_barrier)

    from lmcpipe.convergence import DIMENSION_ESTIMATORS, SYNTHETIC_SOURCES

    convergence = commands.add_parser(
        "convergence", help="W2 between two networks' first-layer neuron measures against width")
    convergence.add_argument("checkpoints", type=Path, nargs="*",
                             help="trained checkpoints for the 'trained' source (optional)")
    convergence.add_argument("--widths", type=int, nargs="+",
                             default=[8, 16, 32, 64, 128, 256, 512, 1024], help="numbers of neurons")
    convergence.add_argument("--repeats", type=int, default=5,
                             help="pairs of networks per synthetic source and width (default: 5)")
    convergence.add_argument("--seed", type=int, default=0, help="seed of the synthetic draws (default: 0)")
    convergence.add_argument("--sources", nargs="*", default=list(SYNTHETIC_SOURCES),
                             choices=SYNTHETIC_SOURCES, help="synthetic sources (default: all)")
    convergence.add_argument("--subspace-dimensions", type=int, nargs="*", default=[2, 4, 8],
                             help="support dimensions k of the subspace source (default: 2 4 8)")
    convergence.add_argument("--estimator", choices=DIMENSION_ESTIMATORS, default="twonn",
                             help="estimator of the trained weights' dimension (default: twonn)")
    convergence.add_argument("--confidence", type=float, default=0.95,
                             help="coverage of the slope interval, in (0, 1) (default: 0.95)")
    convergence.add_argument("--input-dim", type=int,
                             help="input dimension d (default: that of --dataset or of the checkpoints)")
    convergence.add_argument("--dataset", help="dataset whose input dimension is d")
    convergence.add_argument("--out", required=True, type=Path, help="W2 per source, width and repeat (Parquet)")
    convergence.add_argument("--fit-out", required=True, type=Path, help="slope fits (Parquet)")
    convergence.set_defaults(run=cmd_convergence)

    aggregate = commands.add_parser("aggregate", help="study-wide tables and correlations")
    for kind in ("barriers", "curves", "dimensions", "histories", "alignments", "wasserstein"):
        aggregate.add_argument(f"--{kind}", type=Path, nargs="+", required=True,
                               help=f"per-setting {kind} tables")
    aggregate.add_argument("--out-dir", required=True, type=Path)
    aggregate.add_argument("--allow-mixed-versions", action="store_true",
                           help="combine tables written by different lmcpipe versions")
    aggregate.add_argument("--bootstrap-resamples", type=int, default=1000,
                           help="bootstrap samples behind the interval for Spearman's rho; "
                           "0 skips it (default: 1000)")
    aggregate.add_argument("--bootstrap-seed", type=int, default=0,
                           help="seed of the bootstrap samples (default: 0)")
    aggregate.add_argument("--confidence", type=float, default=0.95,
                           help="coverage of the bootstrap interval, in (0, 1) (default: 0.95)")
    aggregate.set_defaults(run=cmd_aggregate)

    data = commands.add_parser("data", help="manage dataset files")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    fetch = data_commands.add_parser(
        "fetch", help="download a public dataset and verify its SHA-256 digests",
        description="Download mnist, fashion_mnist or cifar10 from its public source "
        "into a folder, check each file's size and SHA-256 digest, and write the files "
        "only when all of them match.",
    )
    # The datasets of lmcpipe.fetch.SOURCES, listed here to keep startup fast.
    fetch.add_argument("name", choices=["mnist", "fashion_mnist", "cifar10"])
    fetch.add_argument("--to", type=Path, default=None,
                       help="destination folder (default: data/NAME, the folder a study "
                       "reads when data.directory is not set)")
    fetch.set_defaults(run=cmd_data_fetch)

    plot = commands.add_parser("plot", help="draw the study's plots from its tables")
    plot.add_argument("--tables", required=True, type=Path, help="folder of the study tables")
    plot.add_argument("--out-dir", required=True, type=Path)
    plot.add_argument("names", nargs="*", metavar="NAME",
                      help="plots to draw, each into NAME.png: barrier_vs_width, barrier_vs_lr, "
                      "dimension_vs_lr, barrier_vs_dimension, interpolation_curves, bounds, "
                      "convergence (default: all but the last two)")
    plot.set_defaults(run=cmd_plot)

    summary = commands.add_parser("summary", help="print mean barriers by width and method")
    summary.add_argument("--tables", type=Path, default=Path("results/tables"))
    summary.add_argument("--split", choices=["train", "test"], default="test")
    summary.add_argument("--metric", choices=["loss", "accuracy"], default="loss")
    summary.set_defaults(run=cmd_summary)

    bounds = commands.add_parser("bounds", help="print the theoretical width bounds for LMC error epsilon")
    bounds.add_argument("--epsilon", type=float, nargs="+", required=True,
                        help="LMC errors, each in (0, 1)")
    bounds.add_argument("--input-dim", type=float,
                        help="input dimension m0 = d of the network (or give --dataset)")
    bounds.add_argument("--dataset", help="dataset whose input dimension is m0 = d")
    bounds.add_argument("--depth", type=int, default=1,
                        help="hidden layers of the deep bound (default: 1)")
    bounds.add_argument("--T", type=float, nargs="+", default=[1.0],
                        help="layer constant T_l of the deep bounds, one value or one per layer, "
                        "each greater than every epsilon (default: 1)")
    bounds.add_argument("--dimensions", type=float, nargs="+",
                        help="support dimension k_l of each layer's neuron weights, one value or "
                        "one per layer. Adds the low-dimensional bound.")
    bounds.add_argument("--constant", type=float, default=1.0,
                        help="constant C of the hidden factor C * ln(1/(epsilon*delta))^p (default: 1)")
    bounds.add_argument("--log-power", type=float, default=0.0,
                        help="power p of the hidden factor (default: 0, no logarithmic factor)")
    bounds.add_argument("--delta", type=float, default=0.05,
                        help="failure probability delta in the hidden factor (default: 0.05)")
    bounds.add_argument("--dimensions-table", type=Path,
                        help="a study's dimensions.parquet: adds low-dimensional bounds with k_l the "
                        "median estimate at the largest width, per geometry and estimator; the depth "
                        "is the table's number of hidden layers")
    bounds.add_argument("--estimators", nargs="+", default=["participation_ratio", "twonn"],
                        help="estimators of --dimensions-table to use (default: participation_ratio twonn)")
    bounds.add_argument("--out", type=Path, help="also write the table to this Parquet file")
    bounds.set_defaults(run=cmd_bounds)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command in this process; ``argv`` defaults to the command line.

    The ``lmcpipe`` command first offers the command to a running worker
    (:func:`lmcpipe.client.main`); this function never does.
    """
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    command = " ".join(filter(None, [args.command, getattr(args, "data_command", None)]))
    # The benchmark of a study's start-up cost reads these two lines.
    log.info("lmcpipe %s: started", command)
    started = time.perf_counter()
    try:
        # Before the step's first compilation: JAX checks for the cache only once.
        enable_compilation_cache()
        args.run(args)
    except (ValueError, OSError) as error:
        print(f"lmcpipe {command}: error: {error}", file=sys.stderr)
        return 2
    log.info("lmcpipe %s: finished in %.3f s", command, time.perf_counter() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
