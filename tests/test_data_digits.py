"""Tests of symjax.data.digits: scikit-learn's bundled 8 x 8 digits."""

import numpy as np
import pytest
from sklearn.datasets import load_digits as sklearn_digits

from symjax.data.digits import MAX_VALUE, load_digits, normalize_digits


@pytest.fixture(scope="module")
def reference():
    return sklearn_digits()


def test_splits_partition_the_digits_with_balanced_classes(reference):
    splits = load_digits(val_size=180, test_size=360, seed=0)
    assert [len(d) for d in splits] == [1797 - 540, 180, 360]
    everything = np.concatenate([d.indices for d in splits])
    np.testing.assert_array_equal(np.sort(everything), np.arange(1797))
    np.testing.assert_array_equal(np.bincount(splits.val.labels), [18] * 10)
    np.testing.assert_array_equal(np.bincount(splits.test.labels), [36] * 10)
    for d in splits:
        assert d.images.shape == (len(d), 8, 8, 1) and d.images.dtype == np.uint8
        assert d.labels.dtype == np.int32
        np.testing.assert_array_equal(d.images[..., 0], reference.images[d.indices])
        np.testing.assert_array_equal(d.labels, reference.target[d.indices])
    assert splits.train.images.max() == MAX_VALUE


def test_splits_are_seeded(reference):
    a = load_digits(seed=1, train_size=500)
    b = load_digits(seed=1, train_size=500)
    c = load_digits(seed=2, train_size=500)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.indices, y.indices)
    assert not np.array_equal(a.test.indices, c.test.indices)
    np.testing.assert_array_equal(np.bincount(a.train.labels), [50] * 10)
    # The validation and test sets do not move with train_size.
    full = load_digits(seed=1)
    np.testing.assert_array_equal(full.val.indices, a.val.indices)
    np.testing.assert_array_equal(full.test.indices, a.test.indices)


def test_normalize_digits_maps_to_unit_interval():
    images = np.array([0, 4, 16], np.uint8).reshape(1, 1, 3, 1)
    out = normalize_digits(images)
    assert out.dtype == np.float32 and out.shape == (1, 1, 3, 1)
    np.testing.assert_allclose(np.ravel(out), [0.0, 0.25, 1.0], rtol=0, atol=1e-7)


def test_bad_sizes_raise():
    with pytest.raises(ValueError, match="size"):
        load_digits(test_size=2000)
    with pytest.raises(ValueError, match="seed"):
        load_digits(seed=-1)
