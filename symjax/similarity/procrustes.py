"""Procrustes distances and similarities: orthogonal and G_ReLU (paper Def. 5.2).

Both measures compare two representations as matrices ``A, B`` ``[m, d]`` whose
rows are samples (times positions, for a convolutional layer: ``m = n h w``) and
whose columns are channels, and minimise a Frobenius distance over a group acting
on the columns of ``B``:

.. math::

    \\delta_{G_{ReLU}}(A, B) = \\min_{P \\in \\Sigma_d} \\lVert A - B P \\rVert_F,
    \\qquad \\hat A, \\hat B \\text{ with unit-norm columns (Definition 5.2)},

    \\delta_{O}(A, B) = \\min_{Q \\in O(d)} \\lVert A - B Q \\rVert_F,
    \\qquad \\lVert A \\rVert_F = \\lVert B \\rVert_F = 1.

Normalising the columns makes the first invariant to positive column scales, so
the minimum over permutations is a minimum over ``G_ReLU`` (Definition 5.2). The
similarities are

.. math:: s_{G_{ReLU}} = 1 - \\frac{\\delta}{2\\sqrt d} \\in [0, 1], \\qquad
    s_O = 1 - \\frac{\\delta_O}{2} \\in [1 - 1/\\sqrt 2,\\ 1],

both 1 exactly when the representations agree up to the group (the second is the
paper code's ``1 - sqrt(2 - 2 |A^T B|_*) / 2``; its floor is ``1 - 1/sqrt 2``
because ``|A^T B|_* >= 0``).

How they are computed: the cross matrix ``A^T B`` ``[d, d]`` is formed on the
device (at full precision); the optimal permutation comes from
``scipy.optimize.linear_sum_assignment`` (maximising ``tr(P^T A^T B)``) and the
orthogonal optimum from the singular values of ``A^T B``, both on the host in
float64. Then ``delta^2 = |A|^2 + |B|^2 - 2 tr(P^T A^T B)`` (or
``- 2 |A^T B|_*``) while that is at least a tenth of ``(|A|^2 + |B|^2) / 2``; there
its rounding error ``e`` moves the similarity by about ``e / (4 delta)``, less than
``e``. Closer to alignment that difference of nearly equal numbers loses digits
and can round below zero (the paper code's NaN for identical inputs), so the
distance is evaluated directly as ``|A - B P|_F`` (or ``|A - B Q|_F`` with
``Q = U V^T`` from the SVD ``B^T A = U S V^T``). Identical inputs give a
similarity of exactly 1 under both measures (the orthogonal one recognises them
before the SVD, whose ``Q`` is the identity only to rounding); inputs that agree up
to the group give 1 to rounding; never NaN.

Invariances (group acting on channels, the columns): G_ReLU-Procrustes, the
permutations times positive diagonals (``G_ReLU``), plus per-channel shifts (the
same at every position of a convolutional map) with ``center=True``; not sign
flips (a flipped column cannot be matched) and not a generic orthogonal map.
Orthogonal Procrustes, ``O(d)`` and isotropic scaling, plus per-channel shifts
when it centres; not per-channel scaling.

Rules for unequal shapes:

* widths ``d != d'``: the narrower representation gets zero (dead) columns up to
  ``d = max(d, d')``, as in the paper's code; ``d`` in ``1 - delta / (2 sqrt d)``
  is that common width. For the orthogonal measure this equals using a
  semi-orthogonal ``Q`` (``|A^T B|_*`` does not change).
* spatial sizes: the larger map is average-pooled to the smaller before
  normalising (the sizes must divide); a dense layer counts as ``1 x 1``. (The
  paper's code instead repeats the smaller map's pixels.)

Conventions and centring: Definition 5.2 does **not** centre, so
G_ReLU-Procrustes is *not* invariant to shifts ``A + 1 v^T`` (property (i) of the
paper fails as defined); ``center=True`` centres each channel over samples and
positions first, which restores it. Both conventions follow Definition 5.2 for this
measure. For the orthogonal measure ``convention="standard"`` centres the channels
before the global normalisation (Ding et al., 2021; Williams et al., 2021) and
``"authors"`` does not; ``center`` overrides either.

Note:
  A representation with no live unit after this preprocessing (all zero) leaves
  the normalisation undefined; :class:`ValueError` is raised. The assignment runs
  on the host, so these measures cannot be called under ``jit``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize

from symjax.similarity import features as F
from symjax.similarity.kernels import HIGHEST

Array = jax.Array

GROUPS = ("grelu", "orthogonal")


class ProcrustesState(NamedTuple):
    """One representation prepared for Procrustes (see :meth:`Procrustes.prepare`).

    The normalised channel matrix ``A = X diag(scale)`` ``[n h w, c]`` is never
    materialised: ``A^T B`` is computed from ``values`` and scaled on the host.

    Attributes:
      features: the validated features (kept for pooling to a smaller map).
      values: ``[n, ...]`` what enters the products: ``features.values`` itself,
        or a copy that is centred, or scaled by a power of two when its range could
        overflow a product.
      scale: ``[c]`` column factors, 0 for a dead channel: ``A = X diag(scale)``.
      live: ``[c]`` booleans, the channels with ``scale > 0``.
      squared_norm: ``|A|_F^2``, the number of live channels (G_ReLU) or 1
        (orthogonal); 0 when nothing is live.
    """

    features: F.ChannelFeatures
    values: Array
    scale: np.ndarray
    live: np.ndarray
    squared_norm: float


# Products of entries stay far from overflow and underflow while the largest
# entry is within 2^+-_SAFE_EXPONENT; beyond, a rescaled copy is used.
_SAFE_EXPONENT = 30

# Below this fraction of (|A|^2 + |B|^2) / 2 the squared distance is evaluated
# directly as |A - B P|^2 or |A - B Q|^2 rather than from A^T B.
_DIRECT_BELOW = 0.1


@functools.partial(jax.jit, static_argnames=("scope",))
def _column_scales(x: Array, *, scope: str) -> tuple[Array, Array]:
    """``(scale [c], peak)``: ``x * scale`` has unit-norm columns (``"channels"``)
    or unit Frobenius norm (``"all"``), dead columns get 0; two reductions, no copy.
    """
    x = F.channel_form(x)
    axes = (0, 1) if scope == "channels" else (0, 1, 2)
    peak = jnp.max(jnp.abs(x), axis=axes, keepdims=True)
    ok = peak >= jnp.finfo(x.dtype).tiny
    inv_peak = jnp.where(ok, 1.0 / jnp.where(ok, peak, 1.0), 0.0)
    y = x * inv_peak  # fused into the reduction below, never stored
    sq = jnp.sum(jnp.square(y), axis=axes, keepdims=True)
    scale = inv_peak * jnp.where(sq > 0, jax.lax.rsqrt(jnp.where(sq > 0, sq, 1.0)), 0.0)
    scale = jnp.broadcast_to(scale, (1, 1, x.shape[2])).reshape(-1)
    return scale, jnp.max(peak)


@functools.partial(jax.jit, static_argnames=("center",))
def _conditioned(x: Array, exponent: Array, *, center: bool) -> Array:
    """``x * 2^-exponent``, centred per channel if asked; ``[n, p, c]``."""
    x = jnp.ldexp(F.channel_form(x), -exponent)
    return F.center(x, "channels") if center else x


@jax.jit
def _cross(a: Array, b: Array) -> Array:
    """``X^T Y`` ``[c, c']`` of features ``a`` ``[n, ..., c]`` and ``b``."""
    a = a.reshape(-1, a.shape[-1])
    b = b.reshape(-1, b.shape[-1])
    return jnp.dot(a.T, b, precision=HIGHEST)


@jax.jit
def _scaled_columns(x: Array, scale: Array, idx: Array) -> Array:
    """``x[:, idx] * scale[idx]`` on the channel matrix of ``x`` ``[n, ..., c]``."""
    x = x.reshape(-1, x.shape[-1])
    return x[:, idx] * scale[idx][None, :]


@jax.jit
def _squared_difference(a: Array, b: Array) -> Array:
    return jnp.sum(jnp.square(a - b))


def _permutation_residual(a, b, sa, sb, rows, cols) -> float:
    """``sum_k |a_{rows_k} sa - b_{cols_k} sb|^2`` over matched channel pairs.

    The two scaled sides are formed by separate calls, so that no fused
    multiply-add rounds them differently: identical inputs give exactly 0.
    """
    A = _scaled_columns(a, sa, jnp.asarray(rows))
    B = _scaled_columns(b, sb, jnp.asarray(cols))
    return float(_squared_difference(A, B))


@jax.jit
def _rotation_residual(a, b, sa, sb, Q) -> Array:
    """``|A - B Q|^2`` with ``A = a diag(sa)`` zero-padded to ``Q``'s width."""
    a = a.reshape(-1, a.shape[-1]) * sa[None, :]
    BQ = jnp.dot(b.reshape(-1, b.shape[-1]) * sb[None, :], Q, precision=HIGHEST)
    ca = a.shape[1]
    return jnp.sum(jnp.square(a - BQ[:, :ca])) + jnp.sum(jnp.square(BQ[:, ca:]))


def _identical(va, vb, sa, sb) -> bool:
    """Whether two prepared representations are the same matrix."""
    return (
        va.shape == vb.shape
        and np.array_equal(sa, sb)
        and bool(jnp.array_equal(va, vb))
    )


@dataclasses.dataclass(frozen=True)
class Procrustes:
    """A Procrustes similarity measure with fixed options (module docstring).

    ``Procrustes("grelu")`` is G_ReLU-Procrustes (Definition 5.2),
    ``Procrustes("orthogonal")`` orthogonal Procrustes.

    Attributes:
      group: ``"grelu"`` (permutations of unit-norm columns) or ``"orthogonal"``.
      convention: ``"standard"`` or ``"authors"``; matters for the orthogonal
        measure only (whether channels are centred).
      center: centre each channel over samples and positions first; None takes the
        convention's rule (G_ReLU: no; orthogonal: ``convention == "standard"``).
    """

    group: str = "grelu"
    convention: str = "standard"
    center: bool | None = None

    kind = "similarity"

    def __post_init__(self):
        if self.group not in GROUPS:
            raise ValueError(f"group must be one of {GROUPS}, got {self.group!r}.")
        F.check_convention(self.convention)
        if self.center not in (None, True, False):
            raise ValueError(f"center must be a bool or None, got {self.center!r}.")

    @property
    def name(self) -> str:
        return {"grelu": "grelu_procrustes", "orthogonal": "orthogonal_procrustes"}[
            self.group
        ]

    @property
    def centers(self) -> bool:
        """Whether channels are centred before normalising."""
        if self.center is not None:
            return self.center
        return self.group == "orthogonal" and self.convention == "standard"

    def _state(self, feats: F.ChannelFeatures) -> ProcrustesState:
        scope = "channels" if self.group == "grelu" else "all"
        values = feats.values
        scale, peak = _column_scales(values, scope=scope)
        exponent = int(np.frexp(float(peak))[1]) if float(peak) > 0 else 0
        if self.centers or abs(exponent) > _SAFE_EXPONENT:
            values = _conditioned(values, exponent, center=self.centers)
            scale, _ = _column_scales(values, scope=scope)
        scale = np.asarray(scale, dtype=np.float64)
        live = scale > 0
        sq = float(live.sum()) if self.group == "grelu" else float(live.any())
        return ProcrustesState(feats, values, scale, live, sq)

    def prepare(self, x, name: str = "x") -> ProcrustesState:
        """Validates one representation and finds its normalisation (once per layer).

        Args:
          x: ``[n, d]`` or ``[n, h, w, c]`` features (not modified).
          name: the argument's name, for error messages.
        """
        return self._state(F.as_channel_features(x, name, min_samples=1))

    def _matched(self, a: ProcrustesState, b: ProcrustesState):
        """Both states at a common spatial size (pooling the larger)."""
        if a.features.n != b.features.n:
            raise ValueError(
                f"the representations describe {a.features.n} and {b.features.n} "
                "samples; Procrustes needs the same inputs in the same order."
            )
        hw = F.common_spatial(a.features, b.features)
        a, b = (
            s
            if s.features.spatial == hw
            else self._state(F.average_pool(s.features, hw))
            for s in (a, b)
        )
        if not (a.squared_norm > 0 and b.squared_norm > 0):
            raise ValueError(
                "a representation has no live unit after normalisation (all zero: "
                "every unit dead or constant), so Procrustes is undefined."
            )
        return a, b

    def distance_and_width(self, a: ProcrustesState, b: ProcrustesState):
        """``(delta, d)``: the Procrustes distance and the common width."""
        a, b = self._matched(a, b)
        dtype = jnp.result_type(a.values.dtype, b.values.dtype)
        va, vb = a.values.astype(dtype), b.values.astype(dtype)
        ca, cb = a.scale.size, b.scale.size
        d = max(ca, cb)
        norms = a.squared_norm + b.squared_norm

        # A^T B [d, d] (zero rows and columns for the padding), in float64.
        M = np.zeros((d, d))
        M[:ca, :cb] = np.asarray(_cross(va, vb), np.float64) * np.outer(
            a.scale, b.scale
        )

        # The optimal group element, and |A - B g|^2 from A^T B alone.
        if self.group == "grelu":
            rows, cols = scipy.optimize.linear_sum_assignment(M, maximize=True)
            r = norms - 2.0 * M[rows, cols].sum()
        else:
            r = norms - 2.0 * np.linalg.svd(M, compute_uv=False).sum()

        # Nearly aligned: that difference has lost digits; evaluate |A - B g| itself.
        if r < _DIRECT_BELOW * norms / 2:
            sa, sb = (jnp.asarray(s.scale, dtype) for s in (a, b))
            if self.group == "orthogonal" and _identical(va, vb, a.scale, b.scale):
                # The distance is 0 by definition; the SVD's Q = U V^T is the
                # identity only to rounding and would leave a few ulps.
                r = 0.0
            elif self.group == "grelu":
                real = (rows < ca) & (cols < cb)
                # a live column matched with a padded (zero) one adds its norm, 1
                r = float(a.live[rows[~real & (rows < ca)]].sum())
                r += float(b.live[cols[~real & (cols < cb)]].sum())
                r += _permutation_residual(va, vb, sa, sb, rows[real], cols[real])
            else:
                U, _, Vt = np.linalg.svd(M.T)  # B^T A = U S V^T, Q = U V^T
                Q = jnp.asarray((U @ Vt)[:cb], dtype)
                r = float(_rotation_residual(va, vb, sa, sb, Q))
        return math.sqrt(max(r, 0.0)), d

    def distance(self, a: ProcrustesState, b: ProcrustesState) -> float:
        """The Procrustes **distance** ``delta`` (0 = identical up to the group)."""
        return self.distance_and_width(a, b)[0]

    def compare(self, a: ProcrustesState, b: ProcrustesState) -> float:
        """The Procrustes **similarity** of two prepared representations."""
        delta, d = self.distance_and_width(a, b)
        scale = 2.0 * math.sqrt(d) if self.group == "grelu" else 2.0
        return float(min(max(1.0 - delta / scale, 0.0), 1.0))

    def __call__(self, x, y) -> float:
        """Similarity of ``x`` and ``y`` (``[n, ...]`` each); 1 = identical."""
        return self.compare(self.prepare(x, "x"), self.prepare(y, "y"))


def grelu_procrustes_distance(X, Y, *, center: bool = False) -> float:
    """G_ReLU-Procrustes **distance** (Definition 5.2); 0 = identical up to G_ReLU.

    .. math:: \\delta = \\min_{P \\in \\Sigma_d} \\lVert \\hat X - \\hat Y P \\rVert_F

    with ``hat`` scaling each channel to unit norm over samples and positions.

    Args:
      X: ``[n, d]`` or ``[n, h, w, c]`` features.
      Y: ``[n, d']`` or ``[n, h', w', c']`` features of the same samples (module
        docstring for unequal widths and spatial sizes).
      center: centre channels first (restores invariance to shifts).

    Returns:
      ``delta`` in ``[0, 2 sqrt(max(d, d'))]``.
    """
    m = Procrustes("grelu", center=center)
    return m.distance(m.prepare(X, "X"), m.prepare(Y, "Y"))


def grelu_procrustes_similarity(X, Y, *, center: bool = False) -> float:
    """G_ReLU-Procrustes **similarity** ``1 - delta / (2 sqrt d)`` (Definition 5.2).

    Args:
      X: ``[n, d]`` or ``[n, h, w, c]`` features.
      Y: ``[n, d']`` or ``[n, h', w', c']`` features of the same samples.
      center: centre channels first (Definition 5.2 does not; see module note).

    Returns:
      The similarity in ``[0, 1]``; exactly 1 for identical inputs.
    """
    return Procrustes("grelu", center=center)(X, Y)


def orthogonal_procrustes_distance(X, Y, *, convention: str = "standard") -> float:
    """Orthogonal Procrustes **distance** ``min_Q |A - B Q|_F``; 0 = identical.

    ``A, B`` are the channel matrices ``[n h w, c]`` scaled to unit Frobenius norm
    (after centring each channel when ``convention="standard"``).

    Args:
      X: ``[n, d]`` or ``[n, h, w, c]`` features.
      Y: ``[n, d']`` or ``[n, h', w', c']`` features of the same samples.
      convention: ``"standard"`` (centre) or ``"authors"`` (no centring).

    Returns:
      ``delta`` in ``[0, sqrt 2]``.
    """
    m = Procrustes("orthogonal", convention)
    return m.distance(m.prepare(X, "X"), m.prepare(Y, "Y"))


def orthogonal_procrustes_similarity(X, Y, *, convention: str = "standard") -> float:
    """Orthogonal Procrustes **similarity** ``1 - delta / 2``; 1 = identical up to O(d).

    Args:
      X: ``[n, d]`` or ``[n, h, w, c]`` features.
      Y: ``[n, d']`` or ``[n, h', w', c']`` features of the same samples.
      convention: ``"standard"`` (centre) or ``"authors"`` (no centring).

    Returns:
      The similarity in ``[1 - 1/sqrt 2, 1]``.
    """
    return Procrustes("orthogonal", convention)(X, Y)
