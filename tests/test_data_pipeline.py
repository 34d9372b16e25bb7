"""Tests of symjax.data.pipeline: subsets, splits, batching and augmentation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from symjax.data.pipeline import (
    ArrayDataset,
    augment,
    balanced_indices,
    batch_indices,
    carve_splits,
    epoch_permutation,
    iterate_batches,
    standardize,
)


def _dataset(n, k=10, hw=6, seed=0, name="toy"):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, hw, hw, 3), dtype=np.uint8)
    labels = (np.arange(n) % k).astype(np.int32)
    return ArrayDataset(images, labels, name)


def _shifted(image, dy, dx, pad, mode):
    """The window of the padded image at offset (dy, dx), computed with numpy."""
    h, w, _ = image.shape
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode=mode)
    return padded[dy : dy + h, dx : dx + w]


# ArrayDataset ------------------------------------------------------------------


def test_array_dataset_validates_dtypes_and_shapes():
    images = np.zeros((4, 2, 2, 1), np.uint8)
    labels = np.zeros((4,), np.int32)
    with pytest.raises(TypeError, match="uint8"):
        ArrayDataset(images.astype(np.float32), labels)
    with pytest.raises(TypeError, match="int32"):
        ArrayDataset(images, labels.astype(np.int64))
    with pytest.raises(ValueError, match=r"\[n, H, W, C\]"):
        ArrayDataset(images[..., 0], labels)
    with pytest.raises(ValueError, match="labels must have shape"):
        ArrayDataset(images, labels[:3])


def test_take_composes_indices_into_the_original_split():
    data = _dataset(20)
    first = data.take(np.array([3, 5, 7, 11]))
    second = first.take(np.array([2, 0]))
    np.testing.assert_array_equal(second.indices, [7, 3])
    np.testing.assert_array_equal(second.images, data.images[[7, 3]])
    np.testing.assert_array_equal(second.labels, data.labels[[7, 3]])


# Subsets and splits --------------------------------------------------------------


def test_balanced_indices_are_class_balanced_unique_and_seeded():
    labels = np.repeat(np.arange(10), 50)
    idx = balanced_indices(labels, 103, np.random.default_rng(1))
    assert idx.shape == (103,)
    assert np.unique(idx).shape == (103,)
    counts = np.bincount(labels[idx], minlength=10)
    np.testing.assert_array_equal(counts, [11, 11, 11] + [10] * 7)
    again = balanced_indices(labels, 103, np.random.default_rng(1))
    np.testing.assert_array_equal(idx, again)
    other = balanced_indices(labels, 103, np.random.default_rng(2))
    assert not np.array_equal(idx, other)


def test_balanced_indices_reject_impossible_sizes():
    labels = np.array([0, 0, 0, 1])
    with pytest.raises(ValueError, match="class 1"):
        balanced_indices(labels, 4, np.random.default_rng(0))
    with pytest.raises(ValueError, match="size must lie"):
        balanced_indices(labels, 5, np.random.default_rng(0))


def test_carve_splits_disjoint_deterministic_and_val_independent_of_train_size():
    train, test = _dataset(400, seed=0), _dataset(100, seed=1)
    kwargs = dict(val_size=50, test_size=30, seed=3, name="toy")
    full = carve_splits(train, test, train_size=None, **kwargs)
    small = carve_splits(train, test, train_size=60, **kwargs)

    # Train and validation partition the training split.
    assert len(full.train) + len(full.val) == 400
    assert np.intersect1d(full.train.indices, full.val.indices).size == 0
    assert np.intersect1d(small.train.indices, small.val.indices).size == 0
    np.testing.assert_array_equal(np.bincount(full.val.labels), [5] * 10)
    np.testing.assert_array_equal(np.bincount(small.train.labels), [6] * 10)
    np.testing.assert_array_equal(np.bincount(small.test.labels), [3] * 10)

    # The validation set does not move with train_size; the rows are the
    # examples the indices name.
    np.testing.assert_array_equal(full.val.indices, small.val.indices)
    np.testing.assert_array_equal(small.train.images, train.images[small.train.indices])
    assert [d.name for d in small] == ["toy/train", "toy/val", "toy/test"]

    # Same seed, same splits; another seed, another validation set.
    again = carve_splits(train, test, train_size=60, **kwargs)
    for a, b in zip(small, again, strict=True):
        np.testing.assert_array_equal(a.indices, b.indices)
    kwargs["seed"] = 4
    other = carve_splits(train, test, train_size=60, **kwargs)
    assert not np.array_equal(other.val.indices, small.val.indices)


def test_carve_splits_allows_an_empty_validation_set():
    train, test = _dataset(40), _dataset(10)
    splits = carve_splits(
        train, test, train_size=None, val_size=0, test_size=None, seed=0, name="t"
    )
    assert len(splits.val) == 0 and splits.val.images.shape == (0, 6, 6, 3)
    assert len(splits.train) == 40 and len(splits.test) == 10


# Epochs and batches ---------------------------------------------------------------


def test_epoch_permutation_is_a_deterministic_permutation_per_epoch():
    p0 = epoch_permutation(7, 0, 1000)
    np.testing.assert_array_equal(np.sort(p0), np.arange(1000))
    np.testing.assert_array_equal(p0, epoch_permutation(7, 0, 1000))
    assert not np.array_equal(p0, epoch_permutation(7, 1, 1000))
    assert not np.array_equal(p0, epoch_permutation(8, 0, 1000))
    with pytest.raises(ValueError, match="seed"):
        epoch_permutation(-1, 0, 10)


def test_batch_indices_cover_each_example_once():
    batches = batch_indices(103, 10, seed=0, epoch=2)
    assert [b.shape[0] for b in batches] == [10] * 10 + [3]
    np.testing.assert_array_equal(np.sort(np.concatenate(batches)), np.arange(103))
    np.testing.assert_array_equal(np.concatenate(batches), epoch_permutation(0, 2, 103))
    dropped = batch_indices(103, 10, seed=0, epoch=2, drop_remainder=True)
    assert [b.shape[0] for b in dropped] == [10] * 10
    ordered = batch_indices(25, 10)
    np.testing.assert_array_equal(np.concatenate(ordered), np.arange(25))


def test_iterate_batches_gathers_matching_images_and_labels():
    data = _dataset(37)
    seen = []
    for images, labels in iterate_batches(data, 8, seed=1, drop_remainder=True):
        assert images.shape == (8, 6, 6, 3) and images.dtype == np.uint8
        assert labels.shape == (8,) and labels.dtype == np.int32
        seen.append((images, labels))
    idx = np.concatenate(batch_indices(37, 8, seed=1, drop_remainder=True))
    np.testing.assert_array_equal(
        np.concatenate([s[0] for s in seen]), data.images[idx]
    )
    np.testing.assert_array_equal(
        np.concatenate([s[1] for s in seen]), data.labels[idx]
    )


# Normalisation -----------------------------------------------------------------------


def test_standardize_per_channel():
    images = np.array([[[[0, 51, 255]]]], np.uint8)  # [1, 1, 1, 3]
    out = standardize(images, [0.0, 0.1, 0.5], [1.0, 0.5, 0.25])
    assert out.dtype == jnp.float32 and out.shape == (1, 1, 1, 3)
    np.testing.assert_allclose(out[0, 0, 0], [0.0, 0.2, 2.0], rtol=1e-6, atol=1e-6)


# Augmentation ------------------------------------------------------------------------


def test_flip_only_is_an_exact_mirror_chosen_per_example():
    images = _dataset(64, hw=5).images
    out = np.asarray(augment(jax.random.key(0), images, pad=0, flip=True))
    mirrored = np.array(
        [
            np.array_equal(o, x[:, ::-1]) and not np.array_equal(o, x)
            for o, x in zip(out, images, strict=True)
        ]
    )
    kept = np.array([np.array_equal(o, x) for o, x in zip(out, images, strict=True)])
    np.testing.assert_array_equal(mirrored | kept, True)
    assert 0 < mirrored.sum() < 64


@pytest.mark.parametrize("mode", ["constant", "edge"])
def test_crop_is_a_translated_window_of_the_padded_image(mode):
    pad = 2
    images = _dataset(64, hw=7, seed=5).images
    out = np.asarray(augment(jax.random.key(1), images, pad=pad, flip=False, mode=mode))
    assert out.dtype == np.uint8 and out.shape == images.shape
    offsets = []
    for o, x in zip(out, images, strict=True):
        matches = [
            (dy, dx)
            for dy in range(2 * pad + 1)
            for dx in range(2 * pad + 1)
            if np.array_equal(o, _shifted(x, dy, dx, pad, mode))
        ]
        assert len(matches) == 1, matches  # random content pins the offset
        offsets.append(matches[0])
    # Offsets are drawn per example, and cover most of the (2 pad + 1)^2 grid.
    assert len(set(offsets)) >= 15


def test_crop_and_flip_with_zero_padding_on_float_images():
    pad = 4
    images = np.random.default_rng(3).uniform(1.0, 2.0, size=(32, 8, 8, 3))
    out = np.asarray(augment(jax.random.key(2), jnp.asarray(images), pad=pad))
    assert out.dtype == np.float64
    for o, x in zip(out, images, strict=True):
        candidates = [
            window
            for dy in range(2 * pad + 1)
            for dx in range(2 * pad + 1)
            for window in [_shifted(x, dy, dx, pad, "constant")]
            for window in (window, window[:, ::-1])
        ]
        assert any(np.array_equal(o, c) for c in candidates)


def test_augment_same_key_same_output_and_jit_vmap_agree():
    images = jnp.asarray(_dataset(16, hw=8).images)
    key = jax.random.key(3)
    a = augment(key, images)
    np.testing.assert_array_equal(a, augment(key, images))
    assert not np.array_equal(a, augment(jax.random.key(4), images))

    # Inside a user's jit, and vmapped over stacked batches with one key each.
    in_step = jax.jit(lambda k, x: augment(k, x))(key, images)
    np.testing.assert_array_equal(in_step, a)
    keys = jax.random.split(key, 3)
    stacked = jnp.stack([images, images[::-1], images])
    batched = jax.vmap(augment)(keys, stacked)
    for i in range(3):
        np.testing.assert_array_equal(batched[i], augment(keys[i], stacked[i]))


def test_augment_rejects_bad_arguments():
    images = jnp.zeros((2, 4, 4, 3), jnp.uint8)
    with pytest.raises(ValueError, match="mode"):
        augment(jax.random.key(0), images, mode="wrap")
    with pytest.raises(ValueError, match="pad"):
        augment(jax.random.key(0), images, pad=-1)
    with pytest.raises(ValueError, match=r"\[b, H, W, C\]"):
        augment(jax.random.key(0), images[0])
