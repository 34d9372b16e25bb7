"""scikit-learn's bundled handwritten digits: an offline dataset for MLP demos.

1,797 greyscale 8 x 8 images of the digits 0-9 (about 180 per class), shipped with
scikit-learn, so they load without a network. Pixels are integers in
``[0, 16]`` (the count of set pixels in a 4 x 4 block of the original 32 x 32
bitmap).

Images are kept in the common :class:`ArrayDataset` layout, ``[n, 8, 8, 1]``
``uint8`` with values ``0..16``; :func:`normalize_digits` maps them to ``float32``
in ``[0, 1]``, and an MLP flattens them to ``[n, 64]``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from symjax.data.pipeline import (
    ArrayDataset,
    Splits,
    _check_seed,
    balanced_indices,
    carve_splits,
)

CLASSES = tuple(str(d) for d in range(10))
"""Class names; label ``d`` is the digit ``d``."""

MAX_VALUE = 16
"""The largest pixel value."""


def normalize_digits(images) -> jax.Array:
    """Scales ``[..., 8, 8, 1]`` digit images from ``0..16`` to ``float32`` [0, 1]."""
    return jnp.asarray(images).astype(jnp.float32) / MAX_VALUE


def load_digits(
    val_size: int = 180,
    test_size: int = 360,
    seed: int = 0,
    *,
    train_size: int | None = None,
) -> Splits:
    """The digits as disjoint training, validation and test sets.

    The test set is a class-balanced draw of ``test_size`` of the 1,797 images;
    the validation set a class-balanced draw of ``val_size`` of the rest; the
    training set everything else (or a class-balanced subset of ``train_size``).
    All choices depend on ``seed`` only.

    Args:
      val_size: validation examples.
      test_size: test examples.
      seed: non-negative integer that fixes every choice.
      train_size: training examples to keep, or ``None`` for all that remain.

    Returns:
      ``Splits`` of ``ArrayDataset``s with ``[n, 8, 8, 1]`` uint8 images in
      ``0..16`` and ``[n]`` int32 labels; ``indices`` locate each example in
      scikit-learn's array.
    """
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    images = bunch.images.astype(np.uint8)[..., None]
    full = ArrayDataset(images, bunch.target.astype(np.int32), "digits")
    _check_seed(seed)

    # The test set first, from its own random stream, then the usual carving.
    test_idx = balanced_indices(
        full.labels, test_size, np.random.default_rng([seed, 3])
    )
    rest = np.setdiff1d(np.arange(len(full)), test_idx)
    return carve_splits(
        full.take(rest),
        full.take(test_idx),
        train_size=train_size,
        val_size=val_size,
        test_size=None,
        seed=seed,
        name="digits",
    )
