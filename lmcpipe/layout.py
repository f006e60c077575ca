"""Names and order of the layers in an MLP parameter tree.

Kept apart from :mod:`lmcpipe.models` so that steps which only read weights
(neuron tables, dimensions, alignment) do not import JAX.
"""

from __future__ import annotations

OUTPUT_LAYER = "output"


def hidden_name(index: int) -> str:
    return f"hidden_{index}"


def layer_names(params) -> list[str]:
    """Return the Dense layers of an MLP parameter tree in forward order."""
    depth = sum(1 for name in params if name.startswith("hidden_"))
    names = [hidden_name(index) for index in range(depth)] + [OUTPUT_LAYER]
    missing = [name for name in names if name not in params]
    if missing or len(names) != len(params):
        raise ValueError(
            f"not an MLP parameter tree: layers {sorted(params)}, expected {names}"
        )
    return names
