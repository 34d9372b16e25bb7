"""Pieces shared by the models: activations, cut points and group restrictions.

Every model is a sequence of *cut points* ``l_1, ..., l_L`` (activation layers whose
features alone determine the rest of the network) followed by a head. Writing
``f_{<=l}`` for the map from inputs to the features of ``l`` and ``f_{>l}`` for the
map from those features to the logits, ``f = f_{>l} o f_{<=l}`` for every cut point
(the decomposition behind the paper's eq. 3.5 and its stitching experiments).
:func:`run_cut` evaluates any contiguous piece of that chain.

A hidden space's intertwiner group may have to shrink because of the layers that
read the space: BatchNorm admits only monomial elements, max pooling only elements
whose ``phi`` has non-negative entries, and an additive residual connection only
elements with ``phi(A) = A``. :func:`compatible_group` finds the largest subgroup
with the required properties.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp

from symjax.groups import Dense, IntertwinerGroup, Monomial, activation_group

Array = jax.Array

# Kinds of element, largest first; see symjax.groups for their definitions.
_KINDS = (
    "general_linear",
    "nonzero_monomial",
    "positive_monomial",
    "signed_permutation",
    "permutation",
)

# Diagonals that exhibit every scale a kind allows: phi acts on monomials through a
# scalar function of each scale (identity, absolute value or a power), so checking
# phi on these values decides the properties tested below.
_PROBE_SCALES = {
    "nonzero_monomial": (-2.0, -0.5, 0.5, 2.0),
    "positive_monomial": (0.5, 2.0),
    "signed_permutation": (-1.0, 1.0),
    "permutation": (1.0,),
}


def freeze_params(params) -> tuple[tuple[str, float], ...]:
    """Converts activation parameters to the hashable form a Flax field needs.

    Args:
      params: a mapping such as ``{"negative_slope": 0.1}`` or an already frozen
        tuple of ``(name, value)`` pairs.

    Returns:
      The pairs sorted by name.
    """
    if isinstance(params, Mapping):
        return tuple(sorted(params.items()))
    try:
        return tuple(sorted((str(k), v) for k, v in params))
    except (TypeError, ValueError) as err:
        raise TypeError(
            "activation_params must be a mapping such as {'negative_slope': 0.1}, "
            f"got {params!r}."
        ) from err


def make_group(activation: str, params) -> IntertwinerGroup:
    """The intertwiner group (and activation) named by a model's configuration."""
    return activation_group(activation, **dict(params))


def permutations() -> IntertwinerGroup:
    """The permutation matrices with ``phi(A) = A``.

    Built as the identity activation's ``GL_n`` restricted to permutations: the
    elements and ``phi`` are what a linear stream normalised by LayerNorm, or the
    hidden layer of an activation whose group is the permutations, admits.
    """
    return activation_group("identity").restrict("permutation")


def _nonnegative(phi_scale: Array, scale: Array) -> Array:
    del scale
    return (phi_scale >= 0).all()


def _unchanged(phi_scale: Array, scale: Array) -> Array:
    return jnp.allclose(phi_scale, scale)


def _phi_is(group: IntertwinerGroup, kind: str, test: Callable) -> bool:
    if kind == "general_linear":
        A = jnp.diag(jnp.asarray([-2.0, -0.5, 0.5, 2.0]))
        return bool(test(jnp.diag(group.phi(Dense(A)).matrix()), jnp.diag(A)))
    scale = jnp.asarray(_PROBE_SCALES[kind])
    element = Monomial(jnp.arange(scale.shape[0]), scale)
    phi = group.phi(element)
    if not isinstance(phi, Monomial):
        return False
    return bool(test(phi.scale, scale))


def compatible_group(
    group: IntertwinerGroup,
    *,
    monomial: bool = False,
    nonnegative_phi: bool = False,
    linear: bool = False,
) -> IntertwinerGroup:
    """The largest subgroup of ``group`` that the surrounding layers admit.

    Args:
      group: the activation's intertwiner group.
      monomial: the space is read by a BatchNorm (or is otherwise acted on through
        its permutation part), so elements must be monomial.
      nonnegative_phi: the post-activation features pass through max pooling, which
        commutes with ``phi(A)`` only when ``phi(A)`` is a permutation with
        non-negative scales (``max(-x) != -max(x)``).
      linear: the features are added to a residual stream that transforms by
        ``A``, so ``phi(A) = A`` is required.

    Returns:
      ``group`` itself when it already qualifies, otherwise ``group.restrict(kind)``
      for the largest qualifying kind.

    Raises:
      ValueError: if no subgroup qualifies (never for the groups of Table 1, since
        the permutations always do).
    """
    for kind in _KINDS:
        if kind != group.kind:
            try:
                candidate = group.restrict(kind)
            except ValueError:
                continue
        else:
            candidate = group
        if (monomial or nonnegative_phi) and kind == "general_linear":
            continue
        if nonnegative_phi and not _phi_is(candidate, kind, _nonnegative):
            continue
        if linear and not _phi_is(candidate, kind, _unchanged):
            continue
        return candidate
    raise ValueError(
        f"no subgroup of {group.describe()} for {group.activation!r} satisfies "
        f"monomial={monomial}, nonnegative_phi={nonnegative_phi}, linear={linear}."
    )


def check_cut(layers: tuple[str, ...], start: str | None, stop: str | None):
    """Validates a cut and returns the indices of the first and last layer computed.

    Args:
      layers: the model's cut points in forward order.
      start: a cut point whose features are the input, or None for the data.
      stop: a cut point whose features are returned, or None for the logits.

    Returns:
      ``(first, last)``: layers ``first..last`` are computed (none when ``start``
      is the last cut point and ``stop`` is None); ``last`` is
      ``len(layers) - 1`` when ``stop`` is None (the head follows).
    """
    for arg, value in (("start", start), ("stop", stop)):
        if value is not None and value not in layers:
            raise ValueError(
                f"{arg}={value!r} is not a cut point of this model; choose one of "
                f"{layers} (or None)."
            )
    first = 0 if start is None else layers.index(start) + 1
    last = len(layers) - 1 if stop is None else layers.index(stop)
    if stop is not None and last < first:
        raise ValueError(
            f"stop={stop!r} does not come after start={start!r}; cut points run in "
            f"the order {layers}."
        )
    return first, last


def run_cut(
    module,
    x: Array,
    *,
    train: bool,
    start: str | None,
    stop: str | None,
) -> Array:
    """Evaluates the piece of ``module`` between two cut points.

    Args:
      module: a bound model with ``layers``, ``_layer(i, h, train)`` (computes cut
        point ``i`` from the features of cut point ``i - 1``, or from the data for
        ``i = 0``) and ``_head(h, train)``.
      x: the data, or the features of ``start``.
      train: BatchNorm in training mode.
      start, stop: see :func:`check_cut`.

    Returns:
      The features of ``stop``, or the logits ``[N, num_classes]``.
    """
    layers = module.layers
    first, last = check_cut(layers, start, stop)
    h = x
    for i in range(first, last + 1):
        h = module._layer(i, h, train)
        module.sow("intermediates", layers[i], h)
    if stop is not None:
        return h
    return module._head(h, train)


def conv_spec(
    kernel_in: tuple[str, str] | None, kernel_out: tuple[str, str] | None
) -> tuple:
    """Axis entries of a ``[kh, kw, in, out]`` convolution kernel."""
    return (None, None, kernel_in, kernel_out)


def batch_norm_spec(name: str, space: str) -> dict[str, tuple]:
    """Axis entries of a BatchNorm that outputs into ``space`` (see
    :mod:`symjax.symmetry`: scale and bias are acted on by ``A``, the running
    statistics by its permutation part)."""
    return {
        f"params/{name}/scale": ((space, "out"),),
        f"params/{name}/bias": ((space, "out"),),
        f"batch_stats/{name}/mean": ((space, "perm"),),
        f"batch_stats/{name}/var": ((space, "perm"),),
    }
