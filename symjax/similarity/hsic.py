"""The Hilbert-Schmidt independence criterion (HSIC), biased and unbiased.

For Gram matrices ``K, L`` ``[n, n]`` of two representations of the same ``n``
samples, the biased estimator (Gretton et al., 2005) is

.. math:: \\mathrm{HSIC}_0(K, L) = \\frac{\\operatorname{tr}(K H L H)}{(n-1)^2},
    \\qquad H = I - \\tfrac{1}{n} \\mathbf{1}\\mathbf{1}^T,

and the unbiased estimator ``HSIC_1`` (Song et al., 2012; eq. 3 of Nguyen, Raghu &
Kornblith, 2021), with ``K~, L~`` the Gram matrices with their diagonals set to zero,

.. math:: \\mathrm{HSIC}_1(K, L) = \\frac{1}{n(n-3)} \\Bigl[
    \\operatorname{tr}(\\tilde K \\tilde L)
    + \\frac{\\mathbf{1}^T \\tilde K \\mathbf{1}\\, \\mathbf{1}^T \\tilde L \\mathbf{1}}
           {(n-1)(n-2)}
    - \\frac{2}{n-2} \\mathbf{1}^T \\tilde K \\tilde L \\mathbf{1} \\Bigr].

``HSIC_1`` is the U-statistic of the population HSIC, i.e. it equals

.. math:: \\frac{1}{(n)_2} \\sum_{(i,j)} k_{ij} l_{ij}
    + \\frac{1}{(n)_4} \\sum_{(i,j,q,r)} k_{ij} l_{qr}
    - \\frac{2}{(n)_3} \\sum_{(i,j,q)} k_{ij} l_{iq}

over tuples of distinct indices, ``(n)_m = n!/(n-m)!``.

Both are computed here as inner products of centred matrices, which is exact
algebra and avoids the cancellation of the three-term formula:
``HSIC_0 = <HKH, HLH> / (n-1)^2`` and ``HSIC_1 = <U(K), U(L)> / (n(n-3))`` with
``U`` the U-centring of Szekely & Rizzo (2014),

.. math:: U(K)_{ij} = \\tilde K_{ij} - \\frac{r_i + r_j}{n-2}
    + \\frac{\\mathbf{1}^T \\tilde K \\mathbf{1}}{(n-1)(n-2)} \\ (i \\ne j), \\qquad
    U(K)_{ii} = 0, \\qquad r = \\tilde K \\mathbf{1}.

Consequences used by :mod:`symjax.similarity.cka`: for *any* symmetric ``K`` (PSD
or not) ``HSIC_1(K, K) = |U(K)|^2 / (n(n-3)) >= 0`` and ``HSIC_0(K, K) >= 0``, and
by Cauchy-Schwarz ``|HSIC(K, L)| <= sqrt(HSIC(K, K) HSIC(L, L))``.

Note:
  ``HSIC_1`` of two unrelated representations is an unbiased estimate of zero and
  is often slightly negative; that value is returned as computed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

ESTIMATORS = ("unbiased", "biased")


def _offdiag(K: Array) -> Array:
    return jnp.where(jnp.eye(K.shape[0], dtype=bool), jnp.zeros_like(K), K)


@jax.jit
def u_center(K: Array) -> Array:
    """The U-centred matrix ``U(K)`` ``[n, n]`` of a symmetric ``K`` (``n >= 4``).

    ``<U(K), U(L)> / (n (n - 3))`` is the unbiased ``HSIC_1(K, L)``.
    """
    n = K.shape[0]
    K = _offdiag(K)
    r = jnp.sum(K, axis=1)
    total = jnp.sum(r)
    U = K - (r[:, None] + r[None, :]) / (n - 2) + total / ((n - 1) * (n - 2))
    return _offdiag(U)


@jax.jit
def double_center(K: Array) -> Array:
    """``H K H`` ``[n, n]`` with ``H = I - 11^T/n``.

    ``<HKH, HLH> / (n - 1)^2`` is the biased ``HSIC_0(K, L)``.
    """
    row = jnp.mean(K, axis=1, keepdims=True)
    col = jnp.mean(K, axis=0, keepdims=True)
    return K - row - col + jnp.mean(K)


def centered(K: Array, estimator: str) -> Array:
    """``U(K)`` for the unbiased estimator, ``HKH`` for the biased one."""
    return u_center(K) if estimator == "unbiased" else double_center(K)


def normalizer(n: int, estimator: str) -> float:
    """The factor that turns ``<centred K, centred L>`` into HSIC."""
    return 1.0 / (n * (n - 3)) if estimator == "unbiased" else 1.0 / (n - 1) ** 2


@jax.jit
def frobenius_inner(A: Array, B: Array) -> Array:
    """``<A, B> = sum_ij A_ij B_ij``."""
    return jnp.sum(A * B)


def check_estimator(estimator: str) -> None:
    if estimator not in ESTIMATORS:
        raise ValueError(
            f"estimator must be one of {ESTIMATORS}, got {estimator!r}: 'unbiased' "
            "is HSIC_1 (Song et al., 2012), 'biased' is tr(KHLH)/(n-1)^2."
        )


def check_grams(K, L) -> tuple[Array, Array]:
    """Validates two Gram matrices of the same samples; returns them as arrays."""
    K, L = jnp.asarray(K), jnp.asarray(L)
    for name, M in (("K", K), ("L", L)):
        if M.ndim != 2 or M.shape[0] != M.shape[1]:
            raise ValueError(
                f"{name} must be a square [n, n] Gram matrix, got {M.shape}."
            )
        if not bool(jnp.isfinite(M).all()):
            raise ValueError(f"{name} contains NaN or infinite entries.")
    if K.shape != L.shape:
        raise ValueError(
            f"K and L must describe the same samples, got shapes {K.shape} and "
            f"{L.shape}."
        )
    dtype = jnp.result_type(K.dtype, L.dtype, jnp.float32)
    return K.astype(dtype), L.astype(dtype)


def check_unbiased_size(n: int, name: str = "the representations") -> None:
    """The unbiased estimator divides by ``n - 3``: it needs ``n >= 4`` samples."""
    if n < 4:
        raise ValueError(
            f"the unbiased HSIC needs at least 4 samples, but {name} have {n}; use "
            "more samples or estimator='biased'."
        )


def hsic_unbiased(K, L) -> float:
    """The unbiased estimator ``HSIC_1(K, L)`` (Nguyen et al., 2021, eq. 3).

    A dependence statistic, neither a similarity nor a distance: it is not
    normalised, and is near zero (possibly negative) for unrelated representations.

    Args:
      K: ``[n, n]`` symmetric Gram matrix of the first representation.
      L: ``[n, n]`` symmetric Gram matrix of the second, same samples, ``n >= 4``.

    Returns:
      ``HSIC_1(K, L)`` as a Python float.

    Raises:
      ValueError: non-square or mismatched shapes, ``n < 4``, or NaN/inf entries.
    """
    K, L = check_grams(K, L)
    n = K.shape[0]
    check_unbiased_size(n, "K and L")
    return float(frobenius_inner(u_center(K), u_center(L))) * normalizer(n, "unbiased")


def hsic_biased(K, L) -> float:
    """The biased estimator ``HSIC_0(K, L) = tr(K H L H) / (n - 1)^2``.

    A dependence statistic, neither a similarity nor a distance.

    Args:
      K: ``[n, n]`` symmetric Gram matrix of the first representation.
      L: ``[n, n]`` symmetric Gram matrix of the second, same samples, ``n >= 2``.

    Returns:
      ``HSIC_0(K, L)`` as a Python float.
    """
    K, L = check_grams(K, L)
    n = K.shape[0]
    if n < 2:
        raise ValueError(f"HSIC needs at least 2 samples, got {n}.")
    inner = frobenius_inner(double_center(K), double_center(L))
    return float(inner) * normalizer(n, "biased")


def degenerate_tolerance(dtype) -> float:
    """Relative size under which a self-HSIC counts as zero (rounding noise).

    ``|centred K|^2 <= tol * |K|^2`` (off-diagonal entries) means that, up to
    rounding, ``K`` carries no variation the estimator can see; ``tol`` is
    ``(16 eps)^2`` of the working precision.
    """
    return float((16 * np.finfo(np.dtype(dtype)).eps) ** 2)
