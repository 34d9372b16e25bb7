"""Random rotations and fractional rotations of a feature basis (paper Section 6).

Section 6 asks whether the units of a hidden layer are special: the features
``h`` of a layer are rotated, ``h' = Q^alpha h``, and the rotated units (the rows
of ``Q^alpha``) are dissected as if they were the network's own. ``Q`` is drawn
from the Haar measure on ``SO(n)`` and ``Q^alpha``, ``alpha`` in ``[0, 1]``, walks
the minimal geodesic of ``SO(n)`` from ``I`` to ``Q``:

.. math:: Q^\\alpha = \\exp(\\alpha \\log Q),

with ``log Q`` the principal logarithm (every rotation angle in ``[-pi, pi]``).

The geodesic is computed from the real Schur form ``Q = Z T Z^T``: for an
orthogonal matrix ``T`` is block diagonal with ``1 x 1`` blocks ``+-1`` and
``2 x 2`` rotation blocks ``R(theta) = [[cos, -sin], [sin, cos]]``. Each block's
angle is read with ``atan2(sin, cos)``, which keeps its sign, and scaled by
``alpha``. Reading the angle with ``arccos`` of the diagonal (as the NetDissect
rotation code does) drops the sign, so that its ``Q^1`` rotates some planes the
wrong way and is not ``Q``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg

Array = jax.Array


@functools.partial(jax.jit, static_argnums=(1, 2))
def haar_orthogonal(key: Array, n: int, dtype=None) -> Array:
    """A Haar-random orthogonal matrix in ``O(n)``.

    The ``Q`` factor of the QR decomposition of a standard Gaussian ``[n, n]``
    matrix ``G = Q R`` is made unique by asking that ``R`` have a positive
    diagonal, i.e. ``Q <- Q diag(sign(diag(R)))``; the result is distributed by
    the Haar measure on ``O(n)`` (Mezzadri, 2007, "How to generate random
    matrices from the classical compact groups").

    Args:
      key: a PRNG key.
      n: the dimension.
      dtype: a floating dtype; the default floating dtype if None.

    Returns:
      ``[n, n]`` orthogonal matrix ``Q`` with ``Q^T Q = I``.
    """
    if not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}.")
    G = jax.random.normal(key, (n, n), dtype=dtype)
    Q, R = jnp.linalg.qr(G)
    signs = jnp.sign(jnp.diagonal(R))
    signs = jnp.where(signs == 0, jnp.ones_like(signs), signs)
    return Q * signs[None, :]


@functools.partial(jax.jit, static_argnums=(1, 2))
def haar_special_orthogonal(key: Array, n: int, dtype=None) -> Array:
    """A Haar-random rotation in ``SO(n)``.

    A Haar-random ``Q`` in ``O(n)`` whose first column is negated when
    ``det Q = -1``. Negating a column is a measure-preserving bijection between the
    two cosets of ``O(n)``, so the result is Haar-distributed on ``SO(n)``.

    Args:
      key: a PRNG key.
      n: the dimension.
      dtype: a floating dtype; the default floating dtype if None.

    Returns:
      ``[n, n]`` orthogonal matrix with determinant ``+1``.
    """
    Q = haar_orthogonal(key, n, dtype)
    sign = jnp.where(jnp.linalg.det(Q) < 0, -1.0, 1.0).astype(Q.dtype)
    return Q.at[:, 0].multiply(sign)


def _as_rotation(Q, atol: float) -> np.ndarray:
    """Validates ``Q`` as a rotation and projects it onto ``SO(n)`` in float64."""
    Q = np.asarray(Q, dtype=np.float64)
    if Q.ndim != 2 or Q.shape[0] != Q.shape[1]:
        raise ValueError(f"Q must be a square [n, n] matrix, got shape {Q.shape}.")
    n = Q.shape[0]
    err = np.max(np.abs(Q.T @ Q - np.eye(n)))
    if not err <= atol:
        raise ValueError(
            f"Q must be orthogonal: max |Q^T Q - I| = {err:.3g} exceeds atol={atol}; "
            "pass an orthogonal matrix or raise atol."
        )

    # The nearest orthogonal matrix (polar factor) removes rounding in Q.
    U, _, Vt = np.linalg.svd(Q)
    Q = U @ Vt
    if np.linalg.det(Q) < 0:
        raise ValueError(
            "Q must have determinant +1 (a rotation); a reflection has no path to "
            "the identity inside O(n). Negate one column of Q first."
        )
    return Q


def _rotation_planes(Q: np.ndarray) -> tuple[np.ndarray, list[tuple[int, int, float]]]:
    """The invariant planes and angles of a rotation ``Q = Z T Z^T``.

    Returns:
      ``Z`` ``[n, n]`` (orthogonal Schur vectors) and a list of planes
      ``(i, j, theta)``: ``Q`` rotates the plane spanned by columns ``i`` and ``j``
      of ``Z`` by ``theta`` in ``(-pi, pi]`` (from column ``i`` towards ``j``) and
      fixes every column of ``Z`` that is in no plane.
    """
    T, Z = scipy.linalg.schur(Q, output="real")
    n = Q.shape[0]
    planes = []
    reflected = []
    i = 0
    while i < n:
        if i + 1 < n and T[i + 1, i] != 0.0:
            # A standardised 2 x 2 block [[c, -s], [s, c]]; average the two
            # estimates of each of c and s against rounding.
            cos = 0.5 * (T[i, i] + T[i + 1, i + 1])
            sin = 0.5 * (T[i + 1, i] - T[i, i + 1])
            planes.append((i, i + 1, math.atan2(sin, cos)))
            i += 2
        else:
            if T[i, i] < 0.0:
                reflected.append(i)
            i += 1

    # Eigenvalue -1 appears an even number of times in SO(n); LAPACK returns it
    # as 1 x 1 blocks. Pair them in order into planes turned by +pi.
    if len(reflected) % 2:
        raise ValueError("Q must have determinant +1; found an odd number of -1s.")
    for a, b in zip(reflected[::2], reflected[1::2], strict=True):
        planes.append((a, b, math.pi))
    return Z, planes


def fractional_rotation(Q, alpha: float | Sequence[float], atol: float = 1e-4):
    """``Q^alpha``: the point at ``alpha`` on the minimal geodesic from ``I`` to ``Q``.

    With the real Schur form ``Q = Z T Z^T`` and ``B(alpha)`` the block diagonal
    matrix whose blocks are ``R(alpha theta_k)``,

    .. math:: Q^\\alpha = I + Z\\,(B(\\alpha) - I)\\,Z^T,

    which equals ``Z B(alpha) Z^T`` and is written this way so that ``Q^0 = I``
    exactly and the fixed subspace of ``Q`` is left exactly untouched. For
    ``alpha`` outside ``[0, 1]`` the same one-parameter subgroup is continued, so
    ``Q^a Q^b = Q^(a + b)`` for all real ``a``, ``b``.

    Args:
      Q: ``[n, n]`` rotation (orthogonal, determinant ``+1``); numpy or jax.
      alpha: a real exponent, or a sequence of ``k`` exponents.
      atol: tolerance on ``max |Q^T Q - I|``.

    Returns:
      ``[n, n]`` rotation (``[k, n, n]`` for a sequence of exponents), a jax array
      of ``Q``'s floating dtype (float64 for non-float input when x64 is on).

    Raises:
      ValueError: if ``Q`` is not square, not orthogonal within ``atol``, or has
        determinant ``-1``.

    Note:
      Runs on the host in float64 with ``scipy.linalg.schur`` (cost ``O(n^3)``);
      not for use under ``jit``. ``Q`` is first replaced by its nearest orthogonal
      matrix, so float32 rounding in ``Q`` does not reach the angles. When ``Q``
      has eigenvalue ``-1`` (angle ``pi``) the minimal geodesic is not unique. A
      ``2 x 2`` Schur block at angle ``+-pi`` keeps the sign that ``atan2`` reads
      from it; ``-1`` eigenvalues that LAPACK returns as ``1 x 1`` blocks are
      paired in the order they appear on the Schur diagonal, and each pair's
      plane is turned by ``+pi`` from its first Schur vector towards its second.
      The choice is deterministic for a given ``Q`` and always gives
      ``Q^1 = Q``; a Haar-random ``Q`` has eigenvalue ``-1`` with probability 0.
    """
    R = _as_rotation(Q, atol)
    n = R.shape[0]
    Z, planes = _rotation_planes(R)
    alphas = np.atleast_1d(np.asarray(alpha, dtype=np.float64))
    if alphas.ndim != 1 or not np.all(np.isfinite(alphas)):
        raise ValueError(
            f"alpha must be a finite scalar or 1-D sequence, got {alpha!r}."
        )

    out = np.empty((alphas.shape[0], n, n))
    for k, a in enumerate(alphas):
        D = np.zeros((n, n))
        for i, j, theta in planes:
            c, s = math.cos(a * theta), math.sin(a * theta)
            D[i, i] = D[j, j] = c - 1.0
            D[j, i] = s
            D[i, j] = -s
        out[k] = np.eye(n) + Z @ D @ Z.T

    in_dtype = np.asarray(Q).dtype
    out = jnp.asarray(out, dtype=in_dtype if in_dtype.kind == "f" else None)
    return out if np.ndim(alpha) else out[0]


@functools.partial(jax.jit, static_argnames=("axis",))
def rotate_features(features: Array, R: Array, axis: int = -1) -> Array:
    """Features in the rotated basis: ``h'[..., i] = sum_j R[i, j] h[..., j]``.

    The rotated units are the rows of ``R``.

    Args:
      features: ``[..., n, ...]`` features with the units on ``axis``.
      R: ``[n, n]`` matrix (for Section 6, ``Q^alpha``).
      axis: the unit (channel) axis of ``features``.

    Returns:
      Array of the shape of ``features``.

    Note:
      The product is taken at ``Precision.HIGHEST`` so that accelerators do not
      round float32 features to TF32/bfloat16; with ``R = I`` the features come
      back exactly.
    """
    features = jnp.asarray(features)
    R = jnp.asarray(R, dtype=features.dtype)
    n = features.shape[axis]
    if R.shape != (n, n):
        raise ValueError(
            f"R must be [{n}, {n}] to match features axis {axis}, got {R.shape}."
        )
    moved = jnp.moveaxis(features, axis, -1)
    out = jnp.einsum("...j,ij->...i", moved, R, precision=jax.lax.Precision.HIGHEST)
    return jnp.moveaxis(out, -1, axis)
