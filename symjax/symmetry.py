"""Symmetry specifications and the weight-space action (paper Proposition 3.4).

A network's hidden spaces each carry an intertwiner group. An element ``A_i`` of the
group of hidden space ``i`` acts on the weights by (eq. 3.5)

.. math:: W_i \\mapsto A_i W_i \\phi(A_{i-1})^{-1}, \\qquad b_i \\mapsto A_i b_i,

which leaves the network's function unchanged and maps its post-activation features
as ``f_{<=i}(x, W') = phi(A_i) f_{<=i}(x, W)``.

Which axis of which parameter is acted on by which hidden space is *data*: a
:class:`SymmetrySpec`. Every leaf of a Flax variables dict is named by its
"/"-joined path, collection included (``"params/conv0/kernel"``,
``"batch_stats/bn0/mean"``), and is given one entry per array axis: ``None`` (the
axis is untouched) or ``(space, role)`` with role

``"out"``
  acted on by ``A``: a kernel's output axis, a bias, BatchNorm's scale and bias;
``"in"``
  acted on by ``phi(A)^{-T}``: a kernel's input axis that consumes the space's
  post-activation features (Flax kernels are ``[..., in, out]``, the transpose of
  the paper's ``W``);
``"perm"``
  acted on by the permutation part of ``A`` only: the kernel feeding a BatchNorm and
  BatchNorm's running mean and variance.

The BatchNorm rule. In inference mode BatchNorm computes
``gamma (u - mean) / sqrt(var + eps) + beta``. Permuting ``u``, ``mean`` and ``var``
and multiplying ``gamma`` and ``beta`` by the diagonal of ``A`` maps the output ``z``
to ``A z`` exactly, for any nonzero diagonal. Putting the diagonal on the kernel
that feeds BatchNorm instead would be undone by the normalisation (exactly only if
``eps = 0``), so that kernel takes the permutation alone. BatchNorm therefore admits
monomial elements only: a space read by a BatchNorm cannot carry ``GL_n``.

Residual networks tie hidden spaces: every layer joined by residual connections
shares one space, so one element acts on all of them. A zero-padded shortcut that
widens the stream from ``m`` to ``n`` channels ("option A") ties the wider space to
the narrower one by ``Space(n, group, embed=(parent, offset))``: channels
``[offset, offset + m)`` carry ``phi(A_parent)``, and the padded channels carry an
independent element among themselves.

All functions here are pure, jit-able (close over the spec, trace the elements and
variables) and vmappable over a batch of elements.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from symjax.groups import Element, IntertwinerGroup, Monomial, as_monomial

Array = jax.Array
AxisEntry = tuple[str, str] | None
ROLES = ("out", "in", "perm")


@dataclasses.dataclass(frozen=True)
class Space:
    """A hidden space acted on by an intertwiner group.

    Attributes:
      size: dimension ``n`` (channels).
      group: the group acting on it (usually the activation's, possibly restricted
        by the layers that read it, see :meth:`IntertwinerGroup.restrict`).
      embed: ``(parent, offset)`` for a space that extends a narrower one through a
        zero-padded shortcut, or None.
    """

    size: int
    group: IntertwinerGroup
    embed: tuple[str, int] | None = None


@dataclasses.dataclass(frozen=True)
class SymmetrySpec:
    """Which hidden space acts on which axis of which parameter.

    Attributes:
      spaces: space name -> :class:`Space`.
      axes: "/"-joined variable path -> one entry per array axis, ``None`` or
        ``(space, role)`` with role in ``("out", "in", "perm")``.
      layers: activation-layer name -> the space of its post-activation features.
    """

    spaces: Mapping[str, Space]
    axes: Mapping[str, tuple[AxisEntry, ...]]
    layers: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        for path, entries in self.axes.items():
            for entry in entries:
                if entry is None:
                    continue
                space, role = entry
                if space not in self.spaces:
                    raise ValueError(f"{path}: unknown space {space!r}.")
                if role not in ROLES:
                    raise ValueError(f"{path}: role {role!r} is not one of {ROLES}.")
        for layer, space in self.layers.items():
            if space not in self.spaces:
                raise ValueError(f"layer {layer!r}: unknown space {space!r}.")
        for name, space in self.spaces.items():
            if space.embed is not None:
                parent, offset = space.embed
                if parent not in self.spaces:
                    raise ValueError(f"space {name!r} embeds unknown {parent!r}.")
                if not 0 <= offset <= space.size - self.spaces[parent].size:
                    raise ValueError(
                        f"space {name!r}: offset {offset} does not fit parent "
                        f"{parent!r} of size {self.spaces[parent].size} "
                        f"in {space.size}."
                    )


def _flatten(variables) -> dict[str, Array]:
    return traverse_util.flatten_dict(
        jax.tree_util.tree_map(lambda x: x, dict(variables)), sep="/"
    )


def _check_paths(spec: SymmetrySpec, flat: Mapping[str, Array]) -> None:
    missing = sorted(set(flat) - set(spec.axes))
    extra = sorted(set(spec.axes) - set(flat))
    if missing or extra:
        raise ValueError(
            "The symmetry specification does not match the variables: "
            f"leaves without an entry {missing}, entries without a leaf {extra}. "
            "Every leaf must be listed (None for untouched axes)."
        )
    for path, leaf in flat.items():
        if len(spec.axes[path]) != jnp.ndim(leaf):
            raise ValueError(
                f"{path}: the spec lists {len(spec.axes[path])} axes, the leaf has "
                f"shape {jnp.shape(leaf)}."
            )


def _order(spec: SymmetrySpec) -> list[str]:
    """Space names with every embedded space after its parent."""
    order: list[str] = []

    def visit(name, seen=()):
        if name in order:
            return
        if name in seen:
            raise ValueError(f"cyclic embedding through space {name!r}.")
        embed = spec.spaces[name].embed
        if embed is not None:
            visit(embed[0], (*seen, name))
        order.append(name)

    for name in spec.spaces:
        visit(name)
    return order


def _embed(parent: Monomial, pad: Monomial, size: int, offset: int) -> Monomial:
    """The element of a widened space: ``parent`` on ``[offset, offset + m)``, ``pad``
    on the remaining channels in increasing order."""
    m = parent.size
    pads = jnp.asarray([i for i in range(size) if not offset <= i < offset + m])
    perm = jnp.zeros((size,), parent.perm.dtype)
    perm = perm.at[offset : offset + m].set(parent.perm + offset)
    perm = perm.at[pads].set(pads[pad.perm])
    scale = jnp.zeros((size,), parent.scale.dtype)
    scale = scale.at[offset : offset + m].set(parent.scale).at[pads].set(pad.scale)
    return Monomial(perm, scale)


def sample(spec: SymmetrySpec, key: Array, dtype=jnp.float32) -> dict[str, Element]:
    """Draws one random element per hidden space, respecting embeddings.

    Args:
      spec: the network's symmetry specification.
      key: PRNG key; space ``k`` (in the order of ``spec.spaces``) uses
        ``fold_in(key, k)``, so adding a space does not change the others' draws.
      dtype: dtype of the scales.

    Returns:
      Space name -> element. Vmap over keys for a batch of elements.
    """
    names = list(spec.spaces)
    out: dict[str, Element] = {}
    for name in _order(spec):
        space = spec.spaces[name]
        k = jax.random.fold_in(key, names.index(name))
        if space.embed is None:
            out[name] = space.group.sample(k, space.size, dtype)
            continue
        parent_name, offset = space.embed
        parent = spec.spaces[parent_name]
        inner = as_monomial(parent.group.phi(out[parent_name]))
        pad = as_monomial(space.group.sample(k, space.size - parent.size, dtype))
        out[name] = _embed(inner, pad, space.size, offset)
    return out


def identity(spec: SymmetrySpec, dtype=jnp.float32) -> dict[str, Monomial]:
    """The identity element of every space."""
    return {n: Monomial.identity(s.size, dtype) for n, s in spec.spaces.items()}


def inverse(elements: Mapping[str, Element]) -> dict[str, Element]:
    """Elementwise inverse: ``act(act(W, A), inverse(A)) == W``."""
    return {k: e.inverse() for k, e in elements.items()}


def compose(a: Mapping[str, Element], b: Mapping[str, Element]) -> dict[str, Element]:
    """The product ``a b`` (``b`` acts first): ``act(W, a b) == act(act(W, b), a)``."""
    return {k: a[k].compose(b[k]) for k in a}


def act(spec: SymmetrySpec, variables, elements: Mapping[str, Element]):
    """The weight-space action of Proposition 3.4 on a Flax variables dict.

    Args:
      spec: the network's symmetry specification.
      variables: the Flax variables (``{"params": ..., "batch_stats": ...}``);
        every leaf must be listed in ``spec.axes``.
      elements: space name -> group element of matching size.

    Returns:
      Transformed variables with the same structure: the network computes the
      same function, and its post-activation features at each layer ``l`` in space
      ``s`` are ``phi(A_s)`` applied to the originals (eq. 3.5).

    Raises:
      ValueError: a leaf missing from the spec, a missing or wrongly sized
        element, or a batch of elements (vmap over the batch instead).

    Note:
      Membership is not checked here, since that needs the host and would break
      ``jit``: an element outside its space's group (a dense matrix on a ReLU
      layer, or an embedded space that does not carry its parent's element) gives
      weights of a *different* function. Elements from :func:`sample` are always
      members; validate others with :func:`check_elements` first.
    """
    flat = _flatten(variables)
    _check_paths(spec, flat)
    transforms = {}
    for name, space in spec.spaces.items():
        if name not in elements:
            raise ValueError(f"no element given for space {name!r}.")
        A = elements[name]
        leading = A.perm.ndim - 1 if isinstance(A, Monomial) else A.A.ndim - 2
        if leading:
            raise ValueError(
                f"the element for space {name!r} is a batch (shape "
                f"{A.perm.shape if isinstance(A, Monomial) else A.A.shape}); act "
                "takes one element per space: jax.vmap over the batch."
            )
        if A.size != space.size:
            raise ValueError(f"space {name!r} has size {space.size}, element {A.size}.")
        transforms[name] = {
            "out": A,
            "in": space.group.phi(A).inverse_transpose(),
            "perm": None,
        }

    out = {}
    for path, leaf in flat.items():
        for axis, entry in enumerate(spec.axes[path]):
            if entry is None:
                continue
            name, role = entry
            t = transforms[name][role]
            if t is None:
                t = transforms[name]["perm"] = elements[name].permutation()
            leaf = t.apply(leaf, axis)
        # Keep each leaf's dtype (Flax stores BatchNorm statistics in float32 even
        # when the parameters are float64).
        out[path] = jnp.asarray(leaf, dtype=jnp.result_type(flat[path]))
    return traverse_util.unflatten_dict(out, sep="/")


def act_on_features(
    spec: SymmetrySpec, layer: str, features: Array, elements: Mapping[str, Element]
) -> Array:
    """Maps post-activation features of ``layer`` as the action does (eq. 3.5).

    Args:
      features: ``[..., C]`` channels-last features of ``layer``.

    Returns:
      ``phi(A_s)`` applied to the channel axis, ``s = spec.layers[layer]``.
    """
    name = spec.layers[layer]
    return spec.spaces[name].group.phi(elements[name]).apply(features, -1)


def check_elements(
    spec: SymmetrySpec, elements: Mapping[str, Element], atol: float = 1e-6
) -> None:
    """Raises ValueError unless every element lies in its space's group and every
    embedded space carries its parent's ``phi`` on the embedded channels.

    Runs on the host; use it on elements that did not come from :func:`sample`.
    """
    for name, space in spec.spaces.items():
        A = elements[name]
        if not space.group.contains(A, atol):
            raise ValueError(
                f"the element for space {name!r} is not in {space.group.describe()}."
            )
        if space.embed is None:
            continue
        parent_name, offset = space.embed
        m = spec.spaces[parent_name].size
        inner = np.asarray(
            spec.spaces[parent_name].group.phi(elements[parent_name]).matrix()
        )
        block = np.asarray(A.matrix())[offset : offset + m]
        expected = np.zeros_like(block)
        expected[:, offset : offset + m] = inner
        if not np.allclose(block, expected, atol=atol):
            raise ValueError(
                f"space {name!r} is tied to {parent_name!r} by a residual connection: "
                f"its channels [{offset}, {offset + m}) must carry phi of the parent's "
                "element. Draw elements with symjax.symmetry.sample."
            )
