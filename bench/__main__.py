"""Run the lmcpipe benchmarks and write their results as JSON.

Usage: ``python -m bench [--smoke] [--only NAME ...] [--output PATH]``. It writes every measurement with the machine description to a JSON file
(``bench/results.json`` by default) and prints a Markdown summary table to
standard output. A benchmark that fails is recorded with its error, the
others still run, and the exit status is 1.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import shlex
import sys
import time
from pathlib import Path

from bench import alignment, barriers, memory, pipeline, seeds, training
from bench.machine import machine_info
from bench.report import markdown

log = logging.getLogger("bench")

SECTIONS = {
    "training": training.run,
    "seeds": seeds.run,
    "barrier": barriers.run,
    "alignment": alignment.run,
    "pipeline": pipeline.run,
    "memory": memory.run,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true",
                        help="run every benchmark at tiny sizes, to check that it works; "
                        "the figures mean nothing")
    parser.add_argument("--only", nargs="+", choices=list(SECTIONS), metavar="NAME",
                        help=f"run only these benchmarks: {', '.join(SECTIONS)}")
    parser.add_argument("--output", type=Path, metavar="PATH", default=Path(__file__).resolve().parent / "results.json",
                        help="JSON file to write (default: bench/results.json)")
    return parser.parse_args(argv)


def run_sections(names: list[str], smoke: bool) -> tuple[dict, bool]:
    """Run the named benchmarks; return their results and whether any failed."""
    sections = {}
    failed = False
    for name in names:
        log.info("running benchmark %s%s", name, " at smoke sizes" if smoke else "")
        start = time.perf_counter()
        try:
            section = SECTIONS[name](smoke=smoke)
        except Exception as error:  # record it and run the other benchmarks
            log.exception("benchmark %s failed", name)
            section = {"error": f"{type(error).__name__}: {error}"}
            failed = True
        section["seconds"] = time.perf_counter() - start
        sections[name] = section
        log.info("benchmark %s took %.1f s", name, section["seconds"])
    return sections, failed


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    results = {
        "run": {
            "command": shlex.join([Path(sys.executable).name, "-m", "bench", *sys.argv[1:]]),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "smoke": args.smoke,
        },
        "machine": machine_info(),
    }

    start = time.perf_counter()
    results["sections"], failed = run_sections(args.only or list(SECTIONS), args.smoke)
    results["run"]["seconds"] = time.perf_counter() - start

    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    log.info("wrote %s", args.output)
    print(markdown(results))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
