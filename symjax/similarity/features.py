"""A layer's features in channel form, and the normalisations applied before comparing.

A layer's features arrive as a dense matrix ``[n, d]`` or as a channels-last map
``[n, h, w, c]``. Every measure in :mod:`symjax.similarity` first brings them to the
*channel form* ``[n, p, c]``: ``p = h * w`` positions (``p = 1`` for a dense layer)
and ``c`` channels. The symmetry groups of Section 3 act on the last axis only, so a
group element ``A`` maps ``X[:, :, j]`` to ``scale[j] * X[:, :, perm[j]]``.

Two normalisation scopes appear in the literature and are named here:

* ``"columns"``: statistics of each column of the flattened ``[n, p * c]`` matrix,
  i.e. of every (position, channel) pair over the ``n`` samples (Kornblith et al.,
  2019, who centre the columns of flattened features);
* ``"channels"``: statistics of each channel over samples *and* positions, as the
  paper's code does before both of its CKA kernels.

Conventions (the ``convention`` argument of every measure):

* ``"standard"``: the literature's definition on flattened features.
* ``"authors"``: the per-channel centring and unit-normalisation of the paper's code
  (pnnl/modelsym, commit b6f2288), see ``benchmarks/similarity.py``.

Each measure's docstring states what either convention does for it.
"""

from __future__ import annotations

import functools
import math
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

CONVENTIONS = ("standard", "authors")

Scope = Literal["columns", "channels", "all"]

_AXES = {"columns": (0,), "channels": (0, 1), "all": (0, 1, 2)}


class ChannelFeatures(NamedTuple):
    """Validated features of one layer.

    Attributes:
      values: ``[n, d]`` or ``[n, h, w, c]`` features as given, on the device, in
        a floating dtype (never the caller's buffer, which is never written to).
        Jitted code takes the channel form with :func:`channel_form`, a free
        reshape inside ``jit`` (an eager reshape would copy the array).
      spatial: ``(h, w)``; ``(1, 1)`` for a dense layer.
    """

    values: Array
    spatial: tuple[int, int]

    @property
    def n(self) -> int:
        return self.values.shape[0]

    @property
    def channels(self) -> int:
        return self.values.shape[-1]


def channel_form(x: Array) -> Array:
    """``[n, d]`` -> ``[n, 1, d]``, ``[n, h, w, c]`` -> ``[n, h w, c]``; ``[n, p, c]``
    is left as it is. Meant for use inside ``jit``."""
    return x.reshape(x.shape[0], -1, x.shape[-1])


def check_convention(convention: str) -> None:
    """Raises ``ValueError`` unless ``convention`` is one of :data:`CONVENTIONS`."""
    if convention not in CONVENTIONS:
        raise ValueError(
            f"convention must be one of {CONVENTIONS}, got {convention!r}: "
            "'standard' follows Kornblith et al. on flattened features, "
            "'authors' centres and unit-normalises each channel as the paper's code."
        )


def as_channel_features(x, name: str = "x", min_samples: int = 2) -> ChannelFeatures:
    """Validates one layer's features and brings them to channel form.

    Args:
      x: ``[n, d]`` dense or ``[n, h, w, c]`` channels-last features (any array-like
        of real numbers; integers and half precision are promoted to float32).
      name: the argument's name, used in error messages.
      min_samples: the smallest ``n`` accepted.

    Returns:
      A :class:`ChannelFeatures` (values in the input's layout).

    Raises:
      TypeError: complex or non-numeric input.
      ValueError: wrong rank, an empty axis, fewer than ``min_samples`` samples, or
        a NaN or infinite entry.
    """
    try:
        arr = x if isinstance(x, jax.Array) else np.asarray(x)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be an array of features: {err}") from err
    if not (
        jnp.issubdtype(arr.dtype, jnp.floating)
        or jnp.issubdtype(arr.dtype, jnp.integer)
        or arr.dtype == bool
    ):
        raise TypeError(
            f"{name} must hold real numbers, got dtype {arr.dtype}; cast it to "
            "float32 or float64."
        )
    if arr.ndim == 2:
        n, c = arr.shape
        spatial = (1, 1)
    elif arr.ndim == 4:
        n, h, w, c = arr.shape
        spatial = (h, w)
    else:
        raise ValueError(
            f"{name} must be [n, d] (dense) or [n, h, w, c] (channels-last conv "
            f"features), got shape {tuple(arr.shape)}."
        )
    if min(arr.shape) == 0:
        raise ValueError(f"{name} has an empty axis: shape {tuple(arr.shape)}.")
    if n < min_samples:
        raise ValueError(
            f"{name} has {n} samples but this measure needs at least {min_samples}."
        )
    finite = np.isfinite(arr).all() if isinstance(arr, np.ndarray) else None
    if finite is None:
        finite = bool(jnp.isfinite(arr).all())
    if not finite:
        raise ValueError(
            f"{name} contains NaN or infinite values; remove or repair those samples "
            "before comparing representations."
        )

    dtype = arr.dtype
    if not jnp.issubdtype(dtype, jnp.floating) or jnp.finfo(dtype).bits < 32:
        dtype = jnp.float32
    dtype = jax.dtypes.canonicalize_dtype(dtype)  # float32 unless x64 is enabled
    if isinstance(arr, np.ndarray):
        values = jax.device_put(arr.astype(dtype, copy=False))
    else:
        values = arr.astype(dtype)
    return ChannelFeatures(values, spatial)


def rescale(x: Array) -> Array:
    """Divides ``x`` by its largest absolute entry (leaves an all-zero ``x``).

    Every measure here is invariant to a global positive scale, so this only keeps
    products and squares away from overflow and underflow.
    """
    peak = jnp.max(jnp.abs(x))
    return x / jnp.where(peak > 0, peak, jnp.ones_like(peak))


def center(x: Array, scope: Scope) -> Array:
    """Subtracts the mean of each column or channel of ``x`` ``[n, p, c]``.

    A column (or channel) whose entries are all equal becomes exactly zero, so a
    constant unit never leaves rounding noise behind that could pass for variance.
    """
    axes = _AXES[scope]
    hi = jnp.max(x, axis=axes, keepdims=True)
    lo = jnp.min(x, axis=axes, keepdims=True)
    mean = jnp.mean(x, axis=axes, keepdims=True)
    return jnp.where(hi == lo, jnp.zeros_like(x), x - mean)


def normalize(x: Array, scope: Scope) -> Array:
    """Scales each column, channel or (``"all"``) the whole of ``x`` to unit norm.

    A zero column (a dead unit) stays zero: no division by zero, no NaN. The norm
    is taken after dividing by the largest entry, so that neither very large nor
    very small features overflow or underflow when squared.
    """
    axes = _AXES[scope]
    peak = jnp.max(jnp.abs(x), axis=axes, keepdims=True)
    y = x / jnp.where(peak > 0, peak, jnp.ones_like(peak))  # entries in [-1, 1]
    norm = jnp.sqrt(jnp.sum(jnp.square(y), axis=axes, keepdims=True))  # >= 1 or 0
    return y * (1.0 / jnp.where(norm > 0, norm, jnp.ones_like(norm)))


def average_pool(
    features: ChannelFeatures, spatial: tuple[int, int]
) -> ChannelFeatures:
    """Average-pools a map to a smaller ``spatial`` size that divides its own.

    Args:
      features: the layer's features, spatial size ``(h, w)``.
      spatial: the target ``(h', w')`` with ``h % h' == 0`` and ``w % w' == 0``.

    Returns:
      The pooled features, ``[n, h', w', c]`` (``[n, c]`` when pooled to ``1 x 1``).
    """
    (h, w), (th, tw) = features.spatial, spatial
    if h % th or w % tw:
        raise ValueError(
            f"cannot average-pool a {h}x{w} map to {th}x{tw}: the sizes must divide; "
            "resize one layer's features yourself before comparing."
        )
    pooled = _average_pool(features.values, th, tw, h // th, w // tw)
    return ChannelFeatures(pooled, (th, tw))


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4))
def _average_pool(x: Array, th: int, tw: int, fh: int, fw: int) -> Array:
    n, c = x.shape[0], x.shape[-1]
    x = x.reshape(n, th, fh, tw, fw, c).mean(axis=(2, 4))
    return x if th * tw > 1 else x.reshape(n, c)


def common_spatial(a: ChannelFeatures, b: ChannelFeatures) -> tuple[int, int]:
    """The spatial size two maps are compared at: the smaller of the two.

    The rule (for measures that compare positions one to one, i.e. Procrustes):
    the larger map is average-pooled to the smaller; a dense layer counts as
    ``1 x 1``, so a map compared with a dense layer is pooled globally.
    """
    if a.spatial == b.spatial:
        return a.spatial
    small = min(a.spatial, b.spatial, key=math.prod)
    big = max(a.spatial, b.spatial, key=math.prod)
    if big[0] % small[0] or big[1] % small[1]:
        raise ValueError(
            f"spatial sizes {a.spatial} and {b.spatial} are not nested; the larger "
            "map must be an integer multiple of the smaller in both directions."
        )
    return small
