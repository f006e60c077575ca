"""The ``lmcpipe`` command: one subcommand per step of a study.

Each subcommand reads and writes files only, so the same step runs from the
shell, from Python and from the Snakemake workflow. Errors in the input
(a missing or corrupt file, an invalid setting) end the command with a
one-line message and exit status 2.

When the environment variable ``LMCPIPE_COMPILATION_CACHE`` names a folder,
compiled JAX programs are kept there for later runs (see
:mod:`lmcpipe.runtime`).
"""

from __future__ import annotations

import argparse
import logging
import sys
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
    train_to_files(_read_spec(args.spec), args.seeds, args.out_dir, vectorize)


def cmd_extract(args) -> None:
    from lmcpipe.neurons import extract_to_file

    extract_to_file(args.checkpoint, args.out)


def cmd_dimension(args) -> None:
    from lmcpipe.dimension import dimensions_to_file

    dimensions_to_file(args.neurons, args.out, tuple(args.estimators))


def cmd_align(args) -> None:
    from lmcpipe.alignment import AlignOptions, align_to_file

    options = AlignOptions(
        seed=args.seed, max_passes=args.max_passes, sinkhorn_reg=args.sinkhorn_reg,
        sinkhorn_max_iter=args.sinkhorn_max_iter,
    )
    align_to_file(args.checkpoints, args.methods, args.out, options)


def cmd_wasserstein(args) -> None:
    from lmcpipe.wasserstein import wasserstein_to_file

    wasserstein_to_file(args.checkpoints, args.out)


def cmd_barrier(args) -> None:
    from lmcpipe.barriers import barriers_to_files

    barriers_to_files(args.checkpoints, args.alignment, args.curves_out, args.barriers_out, args.points)


def cmd_aggregate(args) -> None:
    from lmcpipe.aggregate import TABLES, aggregate

    written = aggregate({kind: getattr(args, kind) for kind in TABLES}, args.out_dir)
    for name, path in written.items():
        log.info("wrote %s table %s", name, path)


def cmd_plot(args) -> None:
    from lmcpipe.plots import plot_all

    for path in plot_all(args.tables, args.out_dir):
        log.info("wrote %s", path)


def cmd_summary(args) -> None:
    import pandas as pd

    from lmcpipe.aggregate import summary

    barriers = pd.read_parquet(Path(args.tables) / "barriers.parquet")
    with pd.option_context("display.width", 160, "display.precision", 4):
        print(f"mean {args.split} {args.metric} barrier over pairs, by width and method")
        print(summary(barriers, args.split, args.metric).to_string(float_format="{:.4f}".format))


def cmd_bounds(args) -> None:
    from lmcpipe.theory import bounds_to_file

    table = bounds_to_file(
        args.out, epsilons=args.epsilon, input_dim=args.input_dim, depth=args.depth,
        T=args.T, dimensions=args.dimensions, constant=args.constant,
        log_power=args.log_power, delta=args.delta,
    )
    print("log10 of the width each bound requires ('-': not applicable; inf: beyond the float range)")
    print(table.to_pandas().to_string(index=False, na_rep="-", float_format=lambda value: f"{value:.6g}"))
    if args.out is not None:
        log.info("wrote %s", args.out)


def build_parser() -> argparse.ArgumentParser:
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
                       "another (default: auto, which is vmap)")
    train.set_defaults(run=cmd_train)

    extract = commands.add_parser("extract", help="write the neuron table of one checkpoint")
    extract.add_argument("checkpoint", type=Path)
    extract.add_argument("--out", required=True, type=Path, help="neuron table (Parquet)")
    extract.set_defaults(run=cmd_extract)

    dimension = commands.add_parser("dimension", help="estimate neuron dimensions from neuron tables")
    dimension.add_argument("neurons", type=Path, nargs="+")
    dimension.add_argument("--out", required=True, type=Path, help="dimension table (Parquet)")
    dimension.add_argument("--estimators", nargs="+", default=["participation_ratio", "twonn"],
                           choices=["participation_ratio", "twonn"])
    dimension.set_defaults(run=cmd_dimension)

    align = commands.add_parser("align", help="align every pair of checkpoints of one setting")
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
    align.set_defaults(run=cmd_align)

    wasserstein = commands.add_parser(
        "wasserstein", help="W2 distances between the neuron measures of every pair")
    wasserstein.add_argument("checkpoints", type=Path, nargs="+")
    wasserstein.add_argument("--out", required=True, type=Path, help="Wasserstein table (Parquet)")
    wasserstein.set_defaults(run=cmd_wasserstein)

    barrier = commands.add_parser("barrier", help="interpolation curves and barriers of aligned pairs")
    barrier.add_argument("checkpoints", type=Path, nargs="+")
    barrier.add_argument("--alignment", required=True, type=Path, help="alignment table (Parquet)")
    barrier.add_argument("--curves-out", required=True, type=Path)
    barrier.add_argument("--barriers-out", required=True, type=Path)
    barrier.add_argument("--points", type=int, default=25, help="odd number of values of t")
    barrier.set_defaults(run=cmd_barrier)

    aggregate = commands.add_parser("aggregate", help="study-wide tables and correlations")
    for kind in ("barriers", "curves", "dimensions", "histories", "alignments", "wasserstein"):
        aggregate.add_argument(f"--{kind}", type=Path, nargs="+", required=True,
                               help=f"per-setting {kind} tables")
    aggregate.add_argument("--out-dir", required=True, type=Path)
    aggregate.set_defaults(run=cmd_aggregate)

    plot = commands.add_parser("plot", help="draw the study's plots from its tables")
    plot.add_argument("--tables", required=True, type=Path, help="folder of the study tables")
    plot.add_argument("--out-dir", required=True, type=Path)
    plot.set_defaults(run=cmd_plot)

    summary = commands.add_parser("summary", help="print mean barriers by width and method")
    summary.add_argument("--tables", type=Path, default=Path("results/tables"))
    summary.add_argument("--split", choices=["train", "test"], default="test")
    summary.add_argument("--metric", choices=["loss", "accuracy"], default="loss")
    summary.set_defaults(run=cmd_summary)

    bounds = commands.add_parser("bounds", help="print the theoretical width bounds for LMC error epsilon")
    bounds.add_argument("--epsilon", type=float, nargs="+", required=True,
                        help="LMC errors, each in (0, 1)")
    bounds.add_argument("--input-dim", type=float, required=True,
                        help="input dimension m0 = d of the network")
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
    bounds.add_argument("--out", type=Path, help="also write the table to this Parquet file")
    bounds.set_defaults(run=cmd_bounds)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        # Before the step's first compilation: JAX checks for the cache only once.
        enable_compilation_cache()
        args.run(args)
    except (ValueError, OSError) as error:
        print(f"lmcpipe {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
