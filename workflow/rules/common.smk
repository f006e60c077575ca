import json
import sys
from pathlib import Path

from snakemake.utils import validate

from lmcpipe.config import ConfigError, check_config, check_config_files
from lmcpipe.data import data_spec_fields, require_dataset


# Report every invalid value at once, and repeated YAML keys, before any job
# starts; Snakemake's validate then fills in the schema's defaults.
try:
    check_config_files(workflow.configfiles)
    check_config(config, Path(workflow.basedir) / "schemas" / "config.schema.yaml")
except ConfigError as error:
    sys.exit(f"lmcpipe: {error}")
validate(config, "../schemas/config.schema.yaml")


# Stop before any job when the dataset's files are missing; the error names
# the folders searched and the command that downloads them.
try:
    require_dataset(
        config["dataset"],
        directory=config["data"]["directory"],
        npz_path=config["data"]["npz_path"],
    )
except ValueError as error:
    sys.exit(f"lmcpipe: {error}")
# Loader options of the training spec: only those the dataset uses.
DATA_SPEC_FIELDS = data_spec_fields(
    config["dataset"],
    directory=config["data"]["directory"],
    mnist1d_seed=config["data"]["mnist1d_seed"],
    npz_path=config["data"]["npz_path"],
)


# One folder per setting: every seed of a setting shares dataset, depth,
# width and learning rate. Learning rates appear as Python's repr of the float.
RUN = "results/runs/{dataset}/depth{depth}/width{width}/lr{lr}"
SEEDS = list(range(config["training"]["seeds"]))


wildcard_constraints:
    dataset=r"[a-z0-9_]+",
    depth=r"[0-9]+",
    width=r"[0-9]+",
    lr=r"[0-9][0-9.e+-]*",
    seed=r"[0-9]+",


def format_lr(lr):
    return repr(float(lr))


SETTINGS = [
    {
        "dataset": config["dataset"],
        "depth": config["model"]["depth"],
        "width": width,
        "lr": format_lr(lr),
    }
    for width in config["model"]["widths"]
    for lr in config["training"]["learning_rates"]
]
SETTING_DIRS = [RUN.format(**setting) for setting in SETTINGS]

TABLE_KINDS = ["barriers", "curves", "dimensions", "histories", "alignments", "wasserstein"]
TABLES = expand("results/tables/{kind}.parquet", kind=TABLE_KINDS + ["correlations"])
# Plots of the `plot` rule (see lmcpipe.plots.PLOTS); the convergence plot
# has its own rule.
STUDY_PLOTS = [
    "barrier_vs_width",
    "barrier_vs_lr",
    "dimension_vs_lr",
    "barrier_vs_dimension",
    "interpolation_curves",
    "bounds",
]
PLOTS = expand("results/plots/{name}.png", name=STUDY_PLOTS)
NEURONS = [
    f"{folder}/seed{seed}/neurons.parquet" for folder in SETTING_DIRS for seed in SEEDS
]
CONVERGENCE = config["convergence"]["enabled"]
CONVERGENCE_OUTPUTS = (
    [
        "results/tables/convergence.parquet",
        "results/tables/convergence_fit.parquet",
        "results/plots/convergence.png",
    ]
    if CONVERGENCE
    else []
)


def train_spec(wildcards):
    """Return the JSON training spec of one setting (see lmcpipe.spec.TrainSpec)."""
    training = config["training"]
    spec = {
        "dataset": wildcards.dataset,
        "depth": int(wildcards.depth),
        "width": int(wildcards.width),
        "lr": float(wildcards.lr),
        "epochs": training["epochs"],
        "batch_size": training["batch_size"],
        "momentum": training["momentum"],
        "warmup_steps": training["warmup_steps"],
        "warmup_init_lr": training["warmup_init_lr"],
        "random_seed": config["random_seed"],
        "test_fraction": config["data"]["test_fraction"],
        "split_seed": config["data"]["split_seed"],
        **DATA_SPEC_FIELDS,
    }
    return json.dumps(spec, sort_keys=True)


def train_priority(wildcards):
    """Return a training job's priority: earlier learning rates of the config first.

    Settings that differ only in the learning rate share their compiled
    programs through the compilation cache (see lmcpipe/runtime.py). Run
    side by side, two of them would both compile the programs; in this
    order the later one finds them in the cache.
    """
    rates = [format_lr(lr) for lr in config["training"]["learning_rates"]]
    return len(rates) - rates.index(wildcards.lr) if wildcards.lr in rates else 0


def setting_dir(wildcards):
    return RUN.format(**wildcards)


def checkpoints_of(wildcards):
    return expand(f"{RUN}/seed{{seed}}/params.npz", seed=SEEDS, **wildcards)


def per_setting(name):
    return [f"{folder}/{name}" for folder in SETTING_DIRS]


def histories_of_study(wildcards):
    return [f"{folder}/seed{seed}/history.parquet" for folder in SETTING_DIRS for seed in SEEDS]


def convergence_checkpoints(wildcards):
    """Return the study's checkpoints whose width is also a convergence width.

    Empty unless the `trained` source is requested.
    """
    settings = config["convergence"]
    if "trained" not in settings["sources"]:
        return []
    widths = set(settings["widths"])
    return [
        f"{RUN.format(**setting)}/seed{seed}/params.npz"
        for setting in SETTINGS
        if setting["width"] in widths
        for seed in SEEDS
    ]
