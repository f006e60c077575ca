"""Permutation symmetry of MLP hidden units, derived from the parameter tree.

A permutation ``P_l`` of hidden layer ``l`` reorders that layer's output
units: axis 1 of its kernel, axis 0 of its bias, and axis 0 (the input axis)
of the next layer's kernel. Inputs and logits are never permuted, so a
permuted network computes exactly the same function.

Convention: ``perm[i] = j`` means that unit ``i`` of model A is matched with
unit ``j`` of model B, and the permuted B has ``B'[..., i, ...] = B[..., j, ...]``
along every axis that ``P_l`` touches.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import numpy as np

from lmcpipe.layout import layer_names

ParamKey = tuple[str, str]


@dataclasses.dataclass(frozen=True)
class PermutationSpec:
    """Map from each permutation to the parameter axes it touches.

    Attributes:
        sizes: permutation name (the hidden layer's name) to its size, in
            forward order.
        axes: ``(layer, parameter)`` to one entry per axis: the name of the
            permutation acting on that axis, or ``None``.
    """

    sizes: dict[str, int]
    axes: dict[ParamKey, tuple[str | None, ...]]

    def touching(self, perm: str) -> list[tuple[ParamKey, int]]:
        """Return every ``((layer, parameter), axis)`` that ``perm`` acts on."""
        return [
            (key, axis)
            for key, names in self.axes.items()
            for axis, name in enumerate(names)
            if name == perm
        ]


def permutation_spec(params: Mapping[str, Mapping[str, np.ndarray]]) -> PermutationSpec:
    """Derive the permutation spec of an MLP from its parameter tree.

    The Dense layers are read in forward order; every layer but the last
    defines one permutation of size ``kernel.shape[1]``. The spec is checked
    against ``params`` with :func:`check_spec`.
    """
    names = layer_names(params)
    sizes: dict[str, int] = {}
    axes: dict[ParamKey, tuple[str | None, ...]] = {}
    previous: str | None = None
    for index, name in enumerate(names):
        own = name if index < len(names) - 1 else None
        if own is not None:
            sizes[own] = int(np.shape(params[name]["kernel"])[1])
        axes[(name, "kernel")] = (previous, own)
        axes[(name, "bias")] = (own,)
        previous = own
    spec = PermutationSpec(sizes, axes)
    check_spec(spec, params)
    return spec


def check_spec(spec: PermutationSpec, params) -> None:
    """Raise ``ValueError`` naming the parameter if an axis disagrees with its permutation."""
    for (layer, name), perms in spec.axes.items():
        try:
            shape = np.shape(params[layer][name])
        except KeyError:
            raise ValueError(f"parameter {layer}/{name} is missing") from None
        if len(shape) != len(perms):
            raise ValueError(
                f"parameter {layer}/{name} has {len(shape)} axes, the spec "
                f"expects {len(perms)}"
            )
        for axis, perm in enumerate(perms):
            if perm is not None and shape[axis] != spec.sizes[perm]:
                raise ValueError(
                    f"parameter {layer}/{name} axis {axis} has size {shape[axis]} "
                    f"but permutation {perm} has size {spec.sizes[perm]}"
                )


def check_permutations(spec: PermutationSpec, perms: Mapping[str, np.ndarray]) -> None:
    """Raise ``ValueError`` unless ``perms`` contains one valid permutation per layer."""
    if set(perms) != set(spec.sizes):
        raise ValueError(
            f"permutations given for {sorted(perms)}, expected {sorted(spec.sizes)}"
        )
    for name, perm in perms.items():
        perm = np.asarray(perm)
        size = spec.sizes[name]
        if perm.shape != (size,) or not np.array_equal(np.sort(perm), np.arange(size)):
            raise ValueError(f"{name}: not a permutation of {size} units")


def identity_permutations(spec: PermutationSpec) -> dict[str, np.ndarray]:
    return {name: np.arange(size) for name, size in spec.sizes.items()}


def permute_array(
    array, names: tuple[str | None, ...], perms: Mapping[str, np.ndarray], skip: str | None = None
):
    """Apply the permutations named per axis to ``array``, except ``skip``."""
    for axis, name in enumerate(names):
        if name is not None and name != skip:
            array = np.take(array, perms[name], axis=axis)
    return array


def apply_permutations(
    spec: PermutationSpec, perms: Mapping[str, np.ndarray], params
) -> dict[str, dict[str, np.ndarray]]:
    """Return a copy of ``params`` with every hidden layer's units permuted."""
    check_spec(spec, params)
    check_permutations(spec, perms)
    permuted: dict[str, dict[str, np.ndarray]] = {}
    for (layer, name), names in spec.axes.items():
        permuted.setdefault(layer, {})[name] = permute_array(
            np.asarray(params[layer][name]), names, perms
        )
    return permuted


def random_permutations(spec: PermutationSpec, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {name: rng.permutation(size) for name, size in spec.sizes.items()}


def invert(perm: np.ndarray) -> np.ndarray:
    inverse = np.empty_like(perm)
    inverse[perm] = np.arange(perm.size)
    return inverse
