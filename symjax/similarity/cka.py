"""Centred kernel alignment (CKA): linear, RBF and G_ReLU (paper Definition 5.3).

For Gram matrices ``K, L`` of two representations ``X`` ``[n, ...]`` and ``Y``
``[n, ...]`` of the same ``n`` samples,

.. math:: \\mathrm{CKA}(K, L) = \\frac{\\mathrm{HSIC}(K, L)}
    {\\sqrt{\\mathrm{HSIC}(K, K)\\, \\mathrm{HSIC}(L, L)}},

a **similarity**: 1 when the two representations agree up to the measure's
invariance group. ``HSIC`` is the unbiased ``HSIC_1`` by default (as in the paper and
its code) or the biased ``HSIC_0`` (:mod:`symjax.similarity.hsic`).

The measures, and their invariance groups acting on channels (the last axis):

=================  ==========================  ====================================
measure            ``convention="standard"``   ``convention="authors"``
=================  ==========================  ====================================
linear CKA         centre each flattened       centre and unit-normalise each
                   column; ``K = X X^T``       channel over samples and positions;
                   (Kornblith et al., 2019).   ``K = X X^T``.
                   Invariant: orthogonal       Invariant: permutations x nonzero
                   maps, isotropic scaling,    diagonal, per-channel shifts.
                   shifts.                     *Not* orthogonal maps.
RBF CKA            flattened features; sigma   the same per-channel centring and
                   a multiple of the median    normalisation, then RBF.
                   distance. Invariant:        Invariant: permutations x nonzero
                   orthogonal maps, isotropic  diagonal, per-channel shifts.
                   scaling, shifts.
G_ReLU-CKA         centre and unit-normalise   centre and unit-normalise each
                   each flattened column;      channel over samples and positions;
                   max kernel.                 max kernel.
=================  ==========================  ====================================

On dense features (``[n, d]``) the two conventions of G_ReLU-CKA coincide with
Definition 5.3: centre the columns, scale them to unit norm, use the max kernel
``k(x, y) = max(x * y)`` and the unbiased HSIC. G_ReLU-CKA is invariant to
``G_ReLU`` (permutation x positive diagonal) and to shifts ``X + 1 v^T`` (property
(i) of the paper holds as defined), and in fact to the larger group permutation x
*nonzero* diagonal, because the self-Gram ``max_k x_ik x_jk`` of a normalised
column does not see its sign. It is not invariant to a generic orthogonal map.

Shifts on convolutional features ``[n, h, w, c]``: ``"standard"`` centres every
flattened (position, channel) column, so it removes any shift ``1 v^T`` with ``v``
over positions and channels; ``"authors"`` centres each channel over samples and
positions, so it removes only per-channel shifts (the same at every position). A
shift that varies over positions changes the ``"authors"`` values.
A dead (all-zero) or constant channel contributes a product 0 to the max, so that
``K_ij >= 0`` wherever one exists: dead units change G_ReLU-CKA (as in the paper's
code), while they leave linear and RBF CKA unchanged.

Ranges (what the definitions guarantee):

* biased linear or RBF CKA: ``[0, 1]`` (both kernels are PSD);
* unbiased CKA, any kernel, and biased G_ReLU-CKA: ``[-1, 1]``, by Cauchy-Schwarz
  on the centred Gram matrices. Values slightly below 0 for unrelated
  representations are genuine estimates and are returned as such. Computed values
  are clipped to ``[-1, 1]`` to remove rounding overshoot only.

Note:
  Lemma 5.5 of the paper says the max kernel is positive semi-definite; it is not
  (see :mod:`symjax.similarity.kernels`). The ``[0, 1]`` range claimed for
  G_ReLU-CKA does not follow; ``[-1, 1]`` does, because the self-HSIC of *any*
  symmetric Gram matrix is a sum of squares (``>= 0``). If a self-HSIC is zero up
  to rounding (a constant layer, or an all-dead one), CKA is undefined and
  :class:`ValueError` is raised; no NaN is produced.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from symjax.similarity import features as F
from symjax.similarity import hsic as H
from symjax.similarity import kernels as Kn

Array = jax.Array


class CKAState(NamedTuple):
    """One representation prepared for CKA (see :meth:`CKA.prepare`).

    Attributes:
      centered: ``[n, n]`` centred Gram matrix (``U(K)`` or ``HKH``).
      self_hsic: ``HSIC(K, K)`` (> 0; checked).
      n: number of samples.
    """

    centered: Array
    self_hsic: float
    n: int


def _standardize(x: Array, kernel: str, convention: str) -> Array:
    """Per-convention centring and normalisation; returns ``[n, p, c]``."""
    x = F.rescale(F.channel_form(x))
    if convention == "authors":
        return F.normalize(F.center(x, "channels"), "channels")
    if kernel == "linear":
        return F.center(x, "columns")
    if kernel == "max":
        return F.normalize(F.center(x, "columns"), "columns")
    return x  # rbf: distances ignore shifts; sigma follows the scale


@functools.partial(jax.jit, static_argnames=("kernel", "convention"))
def _standardize_jit(x, *, kernel, convention):
    return _standardize(x, kernel, convention)


@functools.partial(jax.jit, static_argnames=("estimator",))
def _center_jit(K, *, estimator):
    """``(centred K, |centred K|^2, |offdiag K|^2)``."""
    C = H.centered(K, estimator)
    return C, jnp.sum(C * C), jnp.sum(jnp.square(H._offdiag(K)))


def _prepare_gram(x, bandwidth, *, kernel, convention, estimator, block):
    """Standardise, build the Gram matrix in tiles, centre it (three jitted steps,
    each compiled once per shape and shared across the measures that use it)."""
    x = _standardize_jit(x, kernel=kernel, convention=convention)

    median = None
    if kernel == "linear":
        K = Kn.linear_gram_channels(x, block)
    elif kernel == "max":
        K = Kn.max_gram_channels(x, block)
    else:
        K, median = Kn.rbf_gram_channels(x, bandwidth, block)

    C, sq, energy = _center_jit(K, estimator=estimator)
    return C, sq, energy, median


@dataclasses.dataclass(frozen=True)
class CKA:
    """A CKA similarity measure with fixed options; call it on two representations.

    ``CKA(kernel="max")`` is G_ReLU-CKA, ``CKA(kernel="linear")`` linear CKA,
    ``CKA(kernel="rbf")`` RBF CKA. See the module docstring for conventions,
    invariances and ranges.

    Attributes:
      kernel: ``"linear"``, ``"max"`` or ``"rbf"``.
      estimator: ``"unbiased"`` (``HSIC_1``, needs ``n >= 4``) or ``"biased"``.
      convention: ``"standard"`` or ``"authors"``.
      bandwidth: RBF only: ``sigma`` as a multiple of the median pairwise distance.
      block_size: Gram tile size; None picks one (:func:`kernels.auto_block_size`).
    """

    kernel: str = "linear"
    estimator: str = "unbiased"
    convention: str = "standard"
    bandwidth: float = 0.8
    block_size: int | None = None

    kind = "similarity"

    def __post_init__(self):
        if self.kernel not in Kn.KERNELS:
            raise ValueError(
                f"kernel must be one of {Kn.KERNELS}, got {self.kernel!r}."
            )
        H.check_estimator(self.estimator)
        F.check_convention(self.convention)
        if not self.bandwidth > 0:
            raise ValueError(f"bandwidth must be positive, got {self.bandwidth!r}.")
        Kn._check_block_size(self.block_size)

    @property
    def name(self) -> str:
        return {"linear": "cka_linear", "rbf": "cka_rbf", "max": "grelu_cka"}[
            self.kernel
        ]

    def prepare(self, x, name: str = "x") -> CKAState:
        """Builds and centres the Gram matrix of one representation.

        Done once per layer when filling a similarity matrix.

        Args:
          x: ``[n, d]`` or ``[n, h, w, c]`` features (not modified).
          name: the argument's name, for error messages.

        Raises:
          ValueError: bad shape, NaN/inf, too few samples, or a representation
            whose self-HSIC vanishes (CKA undefined).
        """
        feats = F.as_channel_features(x, name, min_samples=2)
        n, c = feats.n, feats.channels
        if self.estimator == "unbiased":
            H.check_unbiased_size(n, name)
        itemsize = feats.values.dtype.itemsize
        block = self.block_size or Kn.auto_block_size(
            n, c if self.kernel == "max" else None, itemsize
        )

        C, sq, energy, median = _prepare_gram(
            feats.values,
            self.bandwidth,
            kernel=self.kernel,
            convention=self.convention,
            estimator=self.estimator,
            block=block,
        )
        if self.kernel == "rbf":
            Kn.check_median(median, name)
        sq, energy = float(sq), float(energy)
        if sq <= H.degenerate_tolerance(feats.values.dtype) * energy:
            raise ValueError(
                f"{name} has no variation that {self.name} can see (a constant "
                "layer, or every unit dead): its self-HSIC is zero, so CKA is "
                "undefined. Drop this layer or use more varied inputs."
            )
        return CKAState(C, sq * H.normalizer(n, self.estimator), n)

    def compare(self, a: CKAState, b: CKAState) -> float:
        """CKA similarity of two prepared representations (same samples)."""
        if a.n != b.n:
            raise ValueError(
                f"the representations describe {a.n} and {b.n} samples; CKA needs "
                "the same inputs in the same order."
            )
        cross = float(H.frobenius_inner(a.centered, b.centered))
        value = cross * H.normalizer(a.n, self.estimator)
        return float(np.clip(value / np.sqrt(a.self_hsic * b.self_hsic), -1.0, 1.0))

    def __call__(self, x, y) -> float:
        """CKA similarity of ``x`` and ``y`` (``[n, ...]`` each); 1 = identical."""
        return self.compare(self.prepare(x, "x"), self.prepare(y, "y"))


def cka_similarity_from_grams(K, L, *, estimator: str = "unbiased") -> float:
    """CKA **similarity** of two Gram matrices ``K, L`` ``[n, n]``; 1 = identical.

    ``K`` and ``L`` need not be positive semi-definite (the max kernel's are not):
    the result is still in ``[-1, 1]``.

    Args:
      K: ``[n, n]`` symmetric Gram matrix of the first representation.
      L: ``[n, n]`` symmetric Gram matrix of the second (same samples).
      estimator: ``"unbiased"`` (``n >= 4``) or ``"biased"``.

    Returns:
      ``HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))`` in ``[-1, 1]``.

    Raises:
      ValueError: shapes, NaN/inf, ``n < 4`` (unbiased), or a vanishing self-HSIC.
    """
    H.check_estimator(estimator)
    K, L = H.check_grams(K, L)
    # CKA is invariant to a positive scale of each Gram matrix; dividing by the
    # largest entry keeps the products below from overflowing or underflowing.
    K, L = F.rescale(K), F.rescale(L)
    n = K.shape[0]
    if estimator == "unbiased":
        H.check_unbiased_size(n, "K and L")
    tol = H.degenerate_tolerance(K.dtype)
    states = []
    for name, M in (("K", K), ("L", L)):
        C = H.centered(M, estimator)
        sq = float(H.frobenius_inner(C, C))
        if sq <= tol * float(jnp.sum(jnp.square(H._offdiag(M)))):
            raise ValueError(
                f"the centred {name} vanishes (no variation): CKA is undefined."
            )
        states.append(CKAState(C, sq * H.normalizer(n, estimator), n))
    return CKA(estimator=estimator).compare(*states)


def linear_cka_similarity(
    X,
    Y,
    *,
    convention: str = "standard",
    estimator: str = "unbiased",
    method: str = "gram",
    block_size: int | None = None,
) -> float:
    """Linear CKA similarity (Kornblith et al., 2019); 1 = identical.

    Args:
      X: ``[n, d]`` or ``[n, h, w, c]`` features of the first representation.
      Y: ``[n, d']`` or ``[n, h', w', c']`` features of the same ``n`` samples;
        widths and spatial sizes may differ.
      convention: ``"standard"`` (centred flattened columns) or ``"authors"``
        (per-channel centring and unit-normalisation first).
      estimator: ``"unbiased"`` or ``"biased"`` HSIC.
      method: ``"gram"`` builds the ``[n, n]`` Gram matrices (cost ``n^2 (D + D')``
        for flattened widths ``D, D'``); ``"features"`` uses the identities
        ``tr(KL) = |X^T Y|_F^2`` etc. (cost ``n D D'``, no ``[n, n]`` array), better
        when ``D D' < n (D + D')``.
      block_size: Gram tile size (``method="gram"``).

    Returns:
      The similarity, in ``[0, 1]`` (biased) or ``[-1, 1]`` (unbiased).
    """
    measure = CKA("linear", estimator, convention, block_size=block_size)
    if method == "gram":
        return measure(X, Y)
    if method != "features":
        raise ValueError(f"method must be 'gram' or 'features', got {method!r}.")
    return _linear_cka_features(X, Y, measure)


@functools.partial(jax.jit, static_argnames=("convention", "estimator"))
def _linear_hsic_terms(x, y, *, convention, estimator):
    """``(HSIC(X,Y), HSIC(X,X), HSIC(Y,Y), energy_X, energy_Y)`` unnormalised."""
    x = _standardize(x, "linear", convention).reshape(x.shape[0], -1)
    y = _standardize(y, "linear", convention).reshape(y.shape[0], -1)
    n = x.shape[0]

    def dot(a, b):
        return jnp.dot(a.T, b, precision=Kn.HIGHEST)

    def terms(a, b):
        # Sum over i != j of K_ij L_ij, and the two sums of the unbiased formula.
        ka, kb = jnp.sum(a * a, axis=1), jnp.sum(b * b, axis=1)
        trace = jnp.sum(jnp.square(dot(a, b))) - jnp.sum(ka * kb)
        if estimator == "biased":
            return trace + jnp.sum(ka * kb)
        sa, sb = jnp.sum(a, axis=0), jnp.sum(b, axis=0)
        ra = jnp.dot(a, sa, precision=Kn.HIGHEST) - ka
        rb = jnp.dot(b, sb, precision=Kn.HIGHEST) - kb
        return (
            trace
            + jnp.sum(ra) * jnp.sum(rb) / ((n - 1) * (n - 2))
            - 2.0 / (n - 2) * jnp.sum(ra * rb)
        )

    def energy(a):
        k = jnp.sum(a * a, axis=1)
        return jnp.sum(jnp.square(dot(a, a))) - jnp.sum(k * k)

    if estimator == "biased":
        x = x - jnp.mean(x, axis=0, keepdims=True)
        y = y - jnp.mean(y, axis=0, keepdims=True)
    return terms(x, y), terms(x, x), terms(y, y), energy(x), energy(y)


def _linear_cka_features(X, Y, measure: CKA) -> float:
    fx = F.as_channel_features(X, "X", min_samples=2)
    fy = F.as_channel_features(Y, "Y", min_samples=2)
    if measure.estimator == "unbiased":
        H.check_unbiased_size(min(fx.n, fy.n), "X and Y")
    if fx.n != fy.n:
        raise ValueError(f"X and Y have {fx.n} and {fy.n} samples; they must agree.")
    dtype = jnp.result_type(fx.values.dtype, fy.values.dtype)
    xy, xx, yy, ex, ey = (
        float(t)
        for t in _linear_hsic_terms(
            fx.values.astype(dtype),
            fy.values.astype(dtype),
            convention=measure.convention,
            estimator=measure.estimator,
        )
    )
    tol = H.degenerate_tolerance(dtype)
    for name, s, e in (("X", xx, ex), ("Y", yy, ey)):
        if s <= tol * e:
            raise ValueError(f"{name} has no variation: CKA is undefined.")
    return float(np.clip(xy / np.sqrt(xx * yy), -1.0, 1.0))


def rbf_cka_similarity(
    X,
    Y,
    *,
    bandwidth: float = 0.8,
    convention: str = "standard",
    estimator: str = "unbiased",
    block_size: int | None = None,
) -> float:
    """RBF CKA similarity (Kornblith et al., 2019); 1 = identical.

    ``sigma = bandwidth * sqrt(median squared pairwise distance)``, computed for each
    representation separately (see :func:`symjax.similarity.kernels.rbf_gram`).

    Args:
      X: ``[n, d]`` or ``[n, h, w, c]`` features.
      Y: ``[n, d']`` or ``[n, h', w', c']`` features of the same samples.
      bandwidth: the multiple of the median distance (default 0.8).
      convention: ``"standard"`` or ``"authors"`` (module docstring).
      estimator: ``"unbiased"`` or ``"biased"``.
      block_size: tile size of the underlying linear Gram.

    Returns:
      The similarity, in ``[0, 1]`` (biased) or ``[-1, 1]`` (unbiased).

    Raises:
      ValueError: also when a median pairwise distance is zero.
    """
    return CKA("rbf", estimator, convention, bandwidth, block_size)(X, Y)


def grelu_cka_similarity(
    X,
    Y,
    *,
    convention: str = "standard",
    estimator: str = "unbiased",
    block_size: int | None = None,
) -> float:
    """G_ReLU-CKA similarity (paper Definition 5.3); 1 = identical up to G_ReLU.

    Centre and unit-normalise the columns (or, ``convention="authors"``, the
    channels over samples and positions), build the max-kernel Gram matrices
    ``K_ij = max_k sum_{h,w} x[i,h,w,k] x[j,h,w,k]`` in tiles, and take CKA with the
    unbiased HSIC.

    Args:
      X: ``[n, d]`` or ``[n, h, w, c]`` features.
      Y: ``[n, d']`` or ``[n, h', w', c']`` features of the same samples.
      convention: ``"standard"`` or ``"authors"`` (identical on dense features).
      estimator: ``"unbiased"`` (Definition 5.3) or ``"biased"``.
      block_size: Gram tile size; None picks one from the channel count.

    Returns:
      The similarity in ``[-1, 1]`` (not ``[0, 1]``: the max kernel is not PSD).

    Raises:
      ValueError: a constant or all-dead layer (self-HSIC zero), ``n < 4``,
        NaN/inf, or mismatched sample counts.
    """
    return CKA("max", estimator, convention, block_size=block_size)(X, Y)
