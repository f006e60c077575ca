"""Summary rows of the benchmark sections and their Markdown table."""

from __future__ import annotations


def row(figure: str, value: str, goal: str = "", met: bool | None = None) -> dict:
    """Return one line of the summary table; ``met`` is None where no goal applies."""
    return {"figure": figure, "value": value, "goal": goal, "met": met}


def _cell(text) -> str:
    return str(text).replace("|", "\\|")


def markdown(results: dict) -> str:
    """Return the machine, the command and one table row per figure of every section."""
    machine = results["machine"]
    run = results["run"]
    lines = [
        f"Machine: {machine['cpu_model']}, {machine['usable_cores']} usable core(s), "
        f"JAX {machine['jax_version']} on {machine['jax_backend']}, "
        f"load average {machine['load_average'][0]:.2f} at start",
        f"Command: `{run['command']}` on {run['date']}"
        + (" (smoke sizes)" if run["smoke"] else ""),
        "",
        "| benchmark | figure | value | goal | met |",
        "|---|---|---:|---|---|",
    ]
    for name, section in results["sections"].items():
        if "error" in section:
            lines.append(f"| {name} | failed | {_cell(section['error'])} | | |")
            continue
        for entry in section["rows"]:
            met = {True: "yes", False: "no", None: ""}[entry["met"]]
            lines.append(
                f"| {name} | {_cell(entry['figure'])} | {_cell(entry['value'])} "
                f"| {_cell(entry['goal'])} | {met} |"
            )
    return "\n".join(lines)
