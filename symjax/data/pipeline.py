"""In-memory image datasets: splits, subsets, batching and augmentation.

Datasets are small enough (CIFAR-10 is 184 MB as ``uint8``) to live in host memory
as one array each, so the input pipeline is plain array indexing: an epoch is a
seeded permutation, a batch is one fancy-indexing call, and augmentation is a
pure ``jax.numpy`` function that runs inside the jitted training step. No Python
code touches individual examples in the hot loop.

Randomness is explicit everywhere. Host-side choices (subsets, validation splits,
epoch orders) use ``numpy`` generators seeded by integer tuples such as
``(seed, epoch)``, which are reproducible across processes and platforms;
device-side augmentation takes a JAX key, one per batch.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

_PAD_MODES = ("constant", "edge")


@dataclasses.dataclass(frozen=True, eq=False)
class ArrayDataset:
    """Images and labels held as host arrays.

    Attributes:
      images: ``[n, H, W, C]`` ``uint8`` images, channels last.
      labels: ``[n]`` ``int32`` class indices.
      name: a label for logs and run records, such as ``"cifar10/val"``.
      indices: ``[n]`` ``int64`` positions of these examples in the full split they
        were drawn from (``None`` when the dataset is a full split itself), so that
        a run can record exactly which examples it used.
    """

    images: np.ndarray
    labels: np.ndarray
    name: str = ""
    indices: np.ndarray | None = None

    def __post_init__(self):
        images, labels = self.images, self.labels
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
            raise TypeError(
                f"images must be a numpy uint8 array, got {type(images).__name__} "
                f"of dtype {getattr(images, 'dtype', None)}; convert with "
                "np.asarray(images, np.uint8)."
            )
        if images.ndim != 4:
            raise ValueError(
                f"images must have shape [n, H, W, C], got {images.shape}; add a "
                "trailing channel axis to greyscale images."
            )
        if not isinstance(labels, np.ndarray) or labels.dtype != np.int32:
            raise TypeError(
                f"labels must be a numpy int32 array, got dtype "
                f"{getattr(labels, 'dtype', None)}; convert with "
                "np.asarray(labels, np.int32)."
            )
        if labels.shape != images.shape[:1]:
            raise ValueError(
                f"labels must have shape [{images.shape[0]}] to match images, got "
                f"{labels.shape}."
            )
        if self.indices is not None and self.indices.shape != labels.shape:
            raise ValueError(
                f"indices must have shape {labels.shape}, got {self.indices.shape}."
            )

    def __len__(self) -> int:
        return self.labels.shape[0]

    def take(self, indices: np.ndarray, name: str | None = None) -> ArrayDataset:
        """The examples at ``indices`` (``[m]`` integers), in that order.

        The new dataset's ``indices`` still refer to the original full split.
        """
        indices = np.asarray(indices, np.int64)
        origin = indices if self.indices is None else self.indices[indices]
        return ArrayDataset(
            self.images[indices],
            self.labels[indices],
            self.name if name is None else name,
            origin,
        )


class Splits(NamedTuple):
    """Training, validation and test data.

    The validation split is carved from the training data; choose epochs and
    hyperparameters on it. The test split is only ever reported.
    """

    train: ArrayDataset
    val: ArrayDataset
    test: ArrayDataset


def _check_seed(seed) -> None:
    if not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")


def balanced_indices(
    labels: np.ndarray, size: int, rng: np.random.Generator
) -> np.ndarray:
    """A class-balanced random subset of example positions.

    Each of the ``k`` classes present in ``labels`` receives ``size // k`` examples,
    and the ``size % k`` classes with the smallest indices one more; within a class
    the examples are drawn uniformly without replacement.

    Args:
      labels: ``[n]`` integer class indices.
      size: number of positions to return, ``0 <= size <= n``.
      rng: the generator that draws the subset.

    Returns:
      ``[size]`` ``int64`` positions into ``labels``, sorted increasingly.

    Raises:
      ValueError: when ``size`` is out of range or a class has fewer examples than
        its share; ask for a smaller ``size``.
    """
    labels = np.asarray(labels)
    if not 0 <= size <= labels.shape[0]:
        raise ValueError(
            f"size must lie in [0, {labels.shape[0]}] for {labels.shape[0]} "
            f"examples, got {size}."
        )
    classes = np.unique(labels)
    base, extra = divmod(size, classes.shape[0])
    chosen = []
    for rank, c in enumerate(classes):
        members = np.flatnonzero(labels == c)
        quota = base + (rank < extra)
        if quota > members.shape[0]:
            raise ValueError(
                f"size={size} asks for {quota} examples of class {c}, which has only "
                f"{members.shape[0]}; ask for a smaller size."
            )
        chosen.append(rng.choice(members, size=quota, replace=False))
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def carve_splits(
    train: ArrayDataset,
    test: ArrayDataset,
    *,
    train_size: int | None,
    val_size: int,
    test_size: int | None,
    seed: int,
    name: str,
) -> Splits:
    """Splits ``train`` into disjoint training and validation sets, and subsets.

    The validation set is drawn first, class-balanced, from all of ``train``; the
    training set is the rest, or a class-balanced subset of the rest of size
    ``train_size``. So, for a fixed ``seed``, the validation set does not depend on
    ``train_size``, and quick runs validate on the same examples as full ones.

    Args:
      train: the full training split.
      test: the full test split.
      train_size: training examples to keep, or ``None`` for all that remain.
      val_size: validation examples to carve out of ``train`` (may be 0).
      test_size: test examples to keep (class-balanced), or ``None`` for all.
      seed: non-negative integer; each choice uses its own stream of it.
      name: prefix of the returned datasets' names.

    Returns:
      ``Splits`` named ``name + "/train"``, ``"/val"`` and ``"/test"``.
    """
    _check_seed(seed)
    val_idx = balanced_indices(train.labels, val_size, np.random.default_rng([seed, 0]))
    rest = np.setdiff1d(np.arange(len(train)), val_idx)
    if train_size is not None:
        pick = balanced_indices(
            train.labels[rest], train_size, np.random.default_rng([seed, 1])
        )
        rest = rest[pick]
    if test_size is None:
        test_idx = np.arange(len(test))
    else:
        test_idx = balanced_indices(
            test.labels, test_size, np.random.default_rng([seed, 2])
        )
    return Splits(
        train=train.take(rest, f"{name}/train"),
        val=train.take(val_idx, f"{name}/val"),
        test=test.take(test_idx, f"{name}/test"),
    )


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The order in which epoch ``epoch`` visits ``n`` examples.

    A pure function of ``(seed, epoch, n)``, so a resumed run replays the same
    batches.

    Returns:
      ``[n]`` ``int64`` permutation of ``range(n)``.
    """
    _check_seed(seed)
    if epoch < 0:
        raise ValueError(f"epoch must be non-negative, got {epoch}.")
    return np.random.default_rng([seed, epoch]).permutation(n).astype(np.int64)


def batch_indices(
    n: int,
    batch_size: int,
    *,
    seed: int | None = None,
    epoch: int = 0,
    drop_remainder: bool = False,
) -> list[np.ndarray]:
    """Positions of the examples in each batch of one epoch.

    Args:
      n: number of examples.
      batch_size: examples per batch.
      seed: shuffles with ``epoch_permutation(seed, epoch, n)``; ``None`` keeps the
        stored order (for evaluation).
      epoch: epoch number, used only when shuffling.
      drop_remainder: drop the last batch when it is smaller than ``batch_size``,
        so that every batch has one shape and a jitted step compiles once.

    Returns:
      A list of ``[batch_size]`` ``int64`` arrays (the last possibly shorter).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    order = np.arange(n) if seed is None else epoch_permutation(seed, epoch, n)
    stop = n - n % batch_size if drop_remainder else n
    return [order[i : i + batch_size] for i in range(0, stop, batch_size)]


def iterate_batches(
    dataset: ArrayDataset,
    batch_size: int,
    *,
    seed: int | None = None,
    epoch: int = 0,
    drop_remainder: bool = False,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yields ``(images [b, H, W, C] uint8, labels [b] int32)`` batches.

    Each batch is gathered by one indexing call; see :func:`batch_indices` for the
    arguments.

    Note:
      Without ``drop_remainder`` a final short batch has a different shape and
      makes a jitted step compile a second time; evaluation accepts that cost once,
      training should drop the remainder.
    """
    for idx in batch_indices(
        len(dataset),
        batch_size,
        seed=seed,
        epoch=epoch,
        drop_remainder=drop_remainder,
    ):
        yield dataset.images[idx], dataset.labels[idx]


def standardize(images, mean, std) -> Array:
    """Per-channel standardisation of ``uint8`` images.

    .. math:: \\hat x_{\\dots c} = (x_{\\dots c} / 255 - \\mu_c) / s_c

    Args:
      images: ``[..., C]`` images with values in ``[0, 255]``.
      mean: ``[C]`` channel means ``mu`` of the images scaled to ``[0, 1]``.
      std: ``[C]`` channel standard deviations ``s`` on the same scale.

    Returns:
      ``[..., C]`` ``float32`` array.
    """
    x = jnp.asarray(images).astype(jnp.float32) / 255.0
    shape = (1,) * (x.ndim - 1) + (-1,)
    mean = jnp.reshape(jnp.asarray(mean, jnp.float32), shape)
    std = jnp.reshape(jnp.asarray(std, jnp.float32), shape)
    return (x - mean) / std


@functools.partial(jax.jit, static_argnames=("pad", "flip", "mode"))
def augment(
    key: Array,
    images: Array,
    pad: int = 4,
    flip: bool = True,
    mode: str = "constant",
) -> Array:
    """Random crops after padding, and random horizontal flips, per example.

    Each image is padded by ``pad`` pixels on every side, a window of the original
    size is cut at an offset ``(dy, dx)`` drawn uniformly from
    ``{0, ..., 2 pad}^2``, and the window is mirrored left-right with probability
    1/2, so that

    .. math:: y[i, j] = \\tilde x[i + dy - pad, j' + dx - pad],

    with ``j' = W - 1 - j`` when mirrored and ``j`` otherwise, and ``x~`` the image
    extended by zeros (``mode="constant"``) or by its border pixels
    (``mode="edge"``). ``pad=4`` with flips is the usual CIFAR-10 recipe; the
    paper's models were trained with ``pad=2``.

    Args:
      key: one JAX key for the whole batch; offsets and flips are drawn
        independently for each example.
      images: ``[b, H, W, C]`` images of any dtype (``uint8`` before
        :func:`standardize`, so that zero padding is black).
      pad: translation range in pixels (static).
      flip: whether to mirror (static).
      mode: ``"constant"`` (zeros) or ``"edge"`` (static).

    Returns:
      ``[b, H, W, C]`` array of the input dtype.

    Note:
      The function is jitted with ``pad``, ``flip`` and ``mode`` static; calling it
      inside a jitted step or under ``jax.vmap`` (one key per batch) works as well.
    """
    if mode not in _PAD_MODES:
        raise ValueError(f"mode must be one of {_PAD_MODES}, got {mode!r}.")
    if not isinstance(pad, int) or pad < 0:
        raise ValueError(f"pad must be a non-negative int, got {pad!r}.")
    if images.ndim != 4:
        raise ValueError(f"images must have shape [b, H, W, C], got {images.shape}.")
    b, h, w, c = images.shape

    # One draw for the whole batch: offsets [b, 2] and mirror flags [b].
    crop_key, flip_key = jax.random.split(key)
    offsets = jax.random.randint(crop_key, (b, 2), 0, 2 * pad + 1)
    mirror = jax.random.bernoulli(flip_key, shape=(b,))

    if pad:
        padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode=mode)
        window = functools.partial(_window, size=(h, w, c))
        images = jax.vmap(window)(padded, offsets)
    if flip:
        images = jnp.where(mirror[:, None, None, None], images[:, :, ::-1], images)
    return images


def _window(image: Array, offset: Array, size: tuple[int, int, int]) -> Array:
    """The ``size`` window of one ``[H', W', C]`` image at ``offset`` ``[2]``."""
    return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), size)
