"""Gram matrices of a layer's features, built in blocks.

Three kernels on the channel form ``X`` ``[n, p, c]`` (see
:mod:`symjax.similarity.features`), with ``x_i`` the ``[p, c]`` features of sample
``i`` and ``x_i^{(k)}`` its ``p`` values in channel ``k``:

.. math::

    K^{lin}_{ij} = \\sum_{k} \\langle x_i^{(k)}, x_j^{(k)} \\rangle, \\qquad
    K^{max}_{ij} = \\max_{k} \\langle x_i^{(k)}, x_j^{(k)} \\rangle, \\qquad
    K^{rbf}_{ij} = \\exp\\bigl(-\\lVert x_i - x_j \\rVert^2 / (2 \\sigma^2)\\bigr).

On a dense layer (``p = 1``) ``K^{max}_{ij} = max(x_i * x_j)`` is the kernel of
G_ReLU-CKA (paper Definition 5.3); on a convolutional layer it compares per-channel
inner products summed over positions, as the paper's code does.

Blocking: the ``[n, n]`` matrix is assembled from ``b x b`` tiles of its upper
triangle, each mirrored into the lower one, inside one ``lax.scan``; only
``ceil(n/b) (ceil(n/b) + 1) / 2`` tiles are computed. Memory beyond the input is
bounded by the padded output plus one tile's intermediates:

* linear kernel: ``n_pad^2 + b^2 + 2 b d`` numbers (``d = p c``: two row slices);
* max kernel: ``n_pad^2 + c b^2`` numbers (the per-channel products of one tile)
  plus a channel-major copy of the input and two tile slices ``2 c b p``;
* RBF kernel: the linear Gram and about three more ``[n, n]`` arrays (squared
  distances, their sort for the median, the kernel),

with ``n_pad = b ceil(n / b)``. With ``block_size=None`` the max kernel's tile is
chosen so that ``c b^2`` stays under about 8 MiB on a CPU and 256 MiB on an
accelerator, and the linear kernel's is ``n / 4`` (:func:`auto_block_size`).
Products are computed at ``lax.Precision.HIGHEST`` (accelerators otherwise use
TF32 or bfloat16 passes for float32 products).

Note:
  **The max kernel is not positive semi-definite.** Lemma 5.5 of the paper states
  that it is, but three non-negative points already refute it:
  ``x = (1, 0), (0, 1), (1, 1)`` give the Gram matrix
  ``[[1, 0, 1], [0, 1, 1], [1, 1, 1]]`` with determinant ``-1`` and eigenvalue
  ``1 - sqrt(2)``. On random point sets (Gaussian, ReLU'd Gaussian, and ReLU'd
  Gaussian centred and column-normalised as G_ReLU-CKA does) a negative eigenvalue
  appears for almost every set of 5 or more points and for every set of 20 or more
  tried (``tests/test_similarity_kernels.py``). What G_ReLU-CKA loses is the
  guarantee ``CKA >= 0`` of the biased estimator; see :mod:`symjax.similarity.cka`
  for what still holds.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from symjax.similarity import features as F

Array = jax.Array

HIGHEST = jax.lax.Precision.HIGHEST

KERNELS = ("linear", "max", "rbf")

# Budget for one tile's intermediates, in bytes.
_TILE_BYTES = {"cpu": 8 * 2**20, "default": 256 * 2**20}


def auto_block_size(n: int, channels: int | None, itemsize: int = 4) -> int:
    """The tile size used when ``block_size=None``.

    Max kernel (``channels`` given): the largest ``b`` with
    ``channels * b^2 * itemsize`` under the backend's tile budget (8 MiB on CPU,
    256 MiB elsewhere). Linear kernel (``channels=None``): a quarter of ``n`` (ten
    tiles of sixteen, 62.5% of the products of one ``[n, n]`` product), or ``n``
    when ``n <= 256``. Either is then evened out so that the padded size
    ``b * ceil(n / b)`` wastes little, and rounded up to a multiple of 8.
    """
    if channels is None:
        b = n if n <= 256 else -(-n // 4)
    else:
        backend = jax.default_backend()
        budget = _TILE_BYTES.get(backend, _TILE_BYTES["default"])
        b = int(math.sqrt(budget / (max(channels, 1) * itemsize)))
    b = max(8, min(b, n))
    blocks = -(-n // b)
    b = -(-n // blocks)
    return min(n, 8 * -(-b // 8))


def _check_block_size(block_size) -> None:
    if block_size is not None and (
        not isinstance(block_size, int | np.integer) or block_size < 1
    ):
        raise ValueError(
            f"block_size must be a positive integer or None, got {block_size!r}."
        )


def symmetric_blocks(z: Array, pair, block: int, axis: int = 0) -> Array:
    """Assembles a symmetric ``[n, n]`` matrix from tiles ``pair(z_I, z_J)``.

    Args:
      z: the input, with its ``n`` samples along ``axis``.
      pair: ``(z_I, z_J) -> [b, b]`` tile for two slices of ``b`` samples.
      block: the tile size ``b`` (static); ``b >= n`` computes one tile.
      axis: the sample axis of ``z``.

    Returns:
      ``[n, n]``, exactly symmetric (the average of the result and its transpose,
      so that tiles on the diagonal are symmetric to the last bit too).
    """
    n = z.shape[axis]
    if block >= n:
        K = pair(z, z)
        return 0.5 * (K + K.T)

    blocks = -(-n // block)
    pad = [(0, 0)] * z.ndim
    pad[axis] = (0, blocks * block - n)
    z = jnp.pad(z, pad)
    rows, cols = np.triu_indices(blocks)

    def tile(K, ij):
        i, j = ij
        a = jax.lax.dynamic_slice_in_dim(z, i * block, block, axis=axis)
        b = jax.lax.dynamic_slice_in_dim(z, j * block, block, axis=axis)
        T = pair(a, b)
        K = jax.lax.dynamic_update_slice(K, T, (i * block, j * block))
        K = jax.lax.dynamic_update_slice(K, T.T, (j * block, i * block))
        return K, None

    size = blocks * block
    K0 = jnp.zeros((size, size), z.dtype)
    K, _ = jax.lax.scan(tile, K0, (jnp.asarray(rows), jnp.asarray(cols)))
    K = K[:n, :n]
    return 0.5 * (K + K.T)


def _linear_pair(a: Array, b: Array) -> Array:
    return jnp.dot(a, b.T, precision=HIGHEST)


def _max_pair(a: Array, b: Array) -> Array:
    # a, b: [c, b, p] channel-major; per-channel inner products, then the max.
    return jnp.einsum("cip,cjp->cij", a, b, precision=HIGHEST).max(axis=0)


@functools.partial(jax.jit, static_argnames=("block",))
def linear_gram_channels(x: Array, block: int) -> Array:
    """Linear Gram ``X X^T`` ``[n, n]`` of features ``[n, ...]`` (all flattened)."""
    return symmetric_blocks(x.reshape(x.shape[0], -1), _linear_pair, block)


@functools.partial(jax.jit, static_argnames=("block",))
def max_gram_channels(x: Array, block: int) -> Array:
    """Max-kernel Gram of features ``[n, p, c]`` (or ``[n, d]``, ``[n, h, w, c]``)."""
    x = F.channel_form(x)
    return symmetric_blocks(jnp.transpose(x, (2, 0, 1)), _max_pair, block, axis=1)


def squared_distances(G: Array) -> Array:
    """Squared Euclidean distances ``[n, n]`` from a linear Gram ``[n, n]``.

    Rounding can make ``G_ii + G_jj - 2 G_ij`` slightly negative; it is clipped at
    zero, and the diagonal is set to exactly zero.
    """
    sq = jnp.diagonal(G)
    D = jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * G, 0.0)
    return jnp.where(jnp.eye(G.shape[0], dtype=bool), jnp.zeros_like(D), D)


def median_offdiagonal(D: Array) -> Array:
    """The median of the off-diagonal entries of a symmetric ``[n, n]`` matrix.

    Equals the median over pairs ``i < j``: each pair appears twice off the
    diagonal, which leaves the median unchanged.
    """
    n = D.shape[0]
    flat = jnp.where(jnp.eye(n, dtype=bool), jnp.inf, D).reshape(-1)
    s = jnp.sort(flat)
    m = n * (n - 1)
    return 0.5 * (s[m // 2 - 1] + s[m // 2])


@functools.partial(jax.jit, static_argnames=("block",))
def rbf_gram_channels(x: Array, bandwidth: float, block: int) -> tuple[Array, Array]:
    """RBF Gram of channel-form features ``[n, p, c]``.

    Returns:
      ``(K [n, n], m)`` with ``m`` the median squared distance; ``sigma^2 =
      bandwidth^2 * m``. ``K`` is meaningless when ``m == 0`` (the caller raises).
    """
    D = squared_distances(linear_gram_channels(x, block))
    m = median_offdiagonal(D)
    scale = 2.0 * bandwidth**2 * jnp.where(m > 0, m, jnp.ones_like(m))
    return jnp.exp(-D / scale), m


def _prepare(x, name: str, block_size, min_samples: int = 2):
    _check_block_size(block_size)
    return F.as_channel_features(x, name, min_samples=min_samples).values


def linear_gram(x, *, block_size: int | None = None) -> Array:
    """The linear kernel's Gram matrix, built in tiles.

    Args:
      x: ``[n, d]`` or ``[n, h, w, c]`` features, used as given (no centring).
      block_size: tile size ``b``; None picks one (see module docstring); ``b >= n``
        computes the whole matrix as one product.

    Returns:
      ``[n, n]`` with ``K_ij = <x_i, x_j>`` over all of ``d`` (or ``h * w * c``).
    """
    v = _prepare(x, "x", block_size, 1)
    n = v.shape[0]
    b = block_size or auto_block_size(n, None)
    return linear_gram_channels(v, b)


def max_gram(x, *, block_size: int | None = None) -> Array:
    """The max kernel's Gram matrix (paper Definition 5.3), built in tiles.

    Args:
      x: ``[n, d]`` or ``[n, h, w, c]`` features, used as given (no centring or
        normalisation; :func:`symjax.similarity.grelu_cka_similarity` applies them).
      block_size: tile size ``b``; None picks one from the number of channels.

    Returns:
      ``[n, n]`` with ``K_ij = max_k sum_{h, w} x[i, h, w, k] x[j, h, w, k]``.

    Note:
      Not positive semi-definite in general, despite Lemma 5.5; see the module
      docstring.
    """
    v = _prepare(x, "x", block_size, 1)
    n, c = v.shape[0], v.shape[-1]
    b = block_size or auto_block_size(n, c, v.dtype.itemsize)
    return max_gram_channels(v, b)


def rbf_gram(x, *, bandwidth: float = 0.8, block_size: int | None = None) -> Array:
    """The Gaussian RBF kernel's Gram matrix with a median-distance bandwidth.

    .. math:: K_{ij} = \\exp(-\\lVert x_i - x_j \\rVert^2 / (2 \\sigma^2)), \\quad
        \\sigma = \\mathrm{bandwidth} \\cdot \\sqrt{\\operatorname{median}_{i<j}
        \\lVert x_i - x_j \\rVert^2}

    (Kornblith et al., 2019, who report multiples 0.2, 0.4 and 0.8.)

    Args:
      x: ``[n, d]`` or ``[n, h, w, c]`` features (flattened; at least 2 samples).
      bandwidth: the multiple of the median distance, > 0.
      block_size: tile size of the underlying linear Gram.

    Returns:
      ``[n, n]`` kernel matrix.

    Raises:
      ValueError: when the median pairwise distance is zero (a constant layer, or
        more than half of the pairs identical): the bandwidth would be zero.
    """
    if not bandwidth > 0:
        raise ValueError(f"bandwidth must be positive, got {bandwidth!r}.")
    v = _prepare(x, "x", block_size, 2)
    n = v.shape[0]
    b = block_size or auto_block_size(n, None)
    K, m = rbf_gram_channels(v, bandwidth, b)
    check_median(m, "x")
    return K


def check_median(m, name: str) -> None:
    """Raises when the median squared distance (of :func:`rbf_gram`) is zero."""
    if not float(m) > 0:
        raise ValueError(
            f"the median pairwise distance of {name} is zero (a constant layer, or "
            "mostly duplicate samples), so the RBF bandwidth would be zero; the RBF "
            "kernel is undefined for these features."
        )
