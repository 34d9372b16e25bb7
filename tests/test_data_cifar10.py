"""Tests of symjax.data.cifar10: locating, decoding, caching and splitting CIFAR-10.

Synthetic image folders and TFDS directories (lossless PNGs of random pixels)
check exact decoding, ordering and caching quickly; the real JPEG copy checks
label order, statistics and splits. Real-data loads go through the default cache
(``SYMJAX_CACHE_DIR`` or ``~/.cache/symjax``): the first run decodes the 60,000
images once, later runs read the cached arrays.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from symjax.data import cifar10
from symjax.data.cifar10 import (
    CLASSES,
    DATA_DIR_ENV,
    MEAN,
    STD,
    find_cifar10,
    load_cifar10,
    load_split,
    normalize,
)

REPO = Path(__file__).resolve().parents[1]


def _write_image_folder(root: Path, sizes: dict[str, int], seed: int = 0) -> dict:
    """Writes ``root/split/<class>/NNNN.png`` with random pixels.

    Returns, per split, the images and labels in (class, file name) order.
    """
    rng = np.random.default_rng(seed)
    written = {}
    for split, per_class in sizes.items():
        images, labels = [], []
        for label, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                x = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
                Image.fromarray(x).save(folder / f"{i:04d}.png")
                images.append(x)
                labels.append(label)
        written[split] = (np.stack(images), np.array(labels, np.int32))
    return written


def _write_tfds_dir(root: Path, sizes: dict[str, int], seed: int = 0) -> dict:
    """Writes a prepared TFDS ``root/cifar10/3.0.2`` with random PNG images."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    rng = np.random.default_rng(seed)
    version_dir = root / "cifar10" / "3.0.2"
    version_dir.mkdir(parents=True)
    features = tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(shape=(32, 32, 3)),
            "label": tfds.features.ClassLabel(names=list(CLASSES)),
        }
    )
    written = {}
    for split, n in sizes.items():
        images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, 10, size=(n,)).astype(np.int32)
        path = version_dir / f"cifar10-{split}.tfrecord-00000-of-00001"
        with tf.io.TFRecordWriter(str(path)) as writer:
            for x, y in zip(images, labels, strict=True):
                writer.write(features.serialize_example({"image": x, "label": y}))
        written[split] = (images, labels)
    tfds.folder_dataset.write_metadata(data_dir=str(version_dir), features=features)
    return written


@pytest.fixture
def no_data_env(monkeypatch):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)


# Locating data and saying how to provide it -----------------------------------------


def test_missing_explicit_directory_says_how_to_provide_data(tmp_path, no_data_env):
    for path in (tmp_path / "absent", tmp_path):
        with pytest.raises(FileNotFoundError) as error:
            load_cifar10(path, cache_dir=tmp_path / "cache")
        message = str(error.value)
        assert str(path) in message
        assert "--data-dir" in message and DATA_DIR_ENV in message


def test_bad_environment_variable_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError, match=DATA_DIR_ENV):
        find_cifar10()


def test_nothing_found_without_download(monkeypatch, no_data_env):
    monkeypatch.setattr(cifar10, "_default_locations", lambda: ())
    with pytest.raises(FileNotFoundError, match="--data-dir") as error:
        find_cifar10(download=False)
    assert "No CIFAR-10 was found" in str(error.value)


def test_search_order_explicit_then_environment(tmp_path, monkeypatch):
    first, second = tmp_path / "first", tmp_path / "second"
    for root in (first, second / "cifar10"):
        for split in ("train", "test"):
            (root / split).mkdir(parents=True)
    monkeypatch.setenv(DATA_DIR_ENV, str(second))
    assert find_cifar10(first) == cifar10.Source("image_folder", first.resolve())
    # The environment variable may name the parent of a cifar10/ folder.
    expected = cifar10.Source("image_folder", (second / "cifar10").resolve())
    assert find_cifar10() == expected


def test_wrong_class_folders_are_rejected(tmp_path):
    for split in ("train", "test"):
        for name in ("cats", "dogs"):
            folder = tmp_path / "data" / split / name
            folder.mkdir(parents=True)
            Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(folder / "0.png")
    with pytest.raises(ValueError, match="expected CIFAR-10's"):
        load_split(find_cifar10(tmp_path / "data"), "test", cache_dir=tmp_path)


# Decoding and caching (synthetic, lossless) -------------------------------------------


def test_image_folder_decodes_exactly_in_class_then_file_order(tmp_path):
    written = _write_image_folder(tmp_path / "data", {"train": 3, "test": 2})
    source = find_cifar10(tmp_path / "data")
    assert source.kind == "image_folder"
    for split, (images, labels) in written.items():
        loaded = load_split(source, split, cache_dir=tmp_path / "cache")
        assert loaded.name == f"cifar10/{split}"
        assert loaded.images.dtype == np.uint8 and loaded.labels.dtype == np.int32
        np.testing.assert_array_equal(loaded.images, images)
        np.testing.assert_array_equal(loaded.labels, labels)


def test_second_load_reads_the_cache_and_new_files_invalidate_it(tmp_path, monkeypatch):
    root, cache = tmp_path / "data", tmp_path / "cache"
    images, _ = _write_image_folder(root, {"train": 1, "test": 2})["test"]
    source = find_cifar10(root)
    first = load_split(source, "test", cache_dir=cache)
    assert len(list(cache.glob("cifar10-test-*.npz"))) == 1

    real_decode = cifar10._decode
    calls = []

    def counting_decode(*args):
        calls.append(args)
        return real_decode(*args)

    monkeypatch.setattr(cifar10, "_decode", counting_decode)
    second = load_split(source, "test", cache_dir=cache)
    assert calls == []
    np.testing.assert_array_equal(second.images, first.images)
    np.testing.assert_array_equal(second.labels, first.labels)

    # One more image changes the file count, hence the cache key.
    extra = np.full((32, 32, 3), 7, np.uint8)
    Image.fromarray(extra).save(root / "test" / "truck" / "9999.png")
    third = load_split(source, "test", cache_dir=cache)
    assert len(calls) == 1 and len(third) == len(first) + 1
    np.testing.assert_array_equal(third.images[-1], extra)
    assert len(list(cache.glob("cifar10-test-*.npz"))) == 2

    # Replacing an image keeps the count but not the content: decoded again.
    other = np.full((32, 32, 3), 200, np.uint8)
    path = root / "test" / "truck" / "9999.png"
    Image.fromarray(other).save(path)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    fourth = load_split(source, "test", cache_dir=cache)
    assert len(calls) == 2 and len(fourth) == len(third)
    np.testing.assert_array_equal(fourth.images[-1], other)


def test_cached_load_does_not_import_tensorflow(tmp_path):
    root, cache = tmp_path / "data", tmp_path / "cache"
    _write_image_folder(root, {"train": 1, "test": 1})
    load_split(find_cifar10(root), "test", cache_dir=cache)
    script = (
        "import sys\n"
        "from symjax.data import find_cifar10, load_split\n"
        f"data = load_split(find_cifar10({str(root)!r}), 'test', "
        f"cache_dir={str(cache)!r})\n"
        "assert len(data) == 10, len(data)\n"
        "print(sorted(m for m in ('tensorflow', 'tensorflow_datasets') "
        "if m in sys.modules))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_tfds_data_dir_is_read_through_tfds(tmp_path):
    written = _write_tfds_dir(tmp_path / "tfds", {"train": 40, "test": 12})
    source = find_cifar10(tmp_path / "tfds")
    assert source == cifar10.Source("tfds", (tmp_path / "tfds/cifar10/3.0.2").resolve())
    splits = load_cifar10(
        tmp_path / "tfds", val_size=0, cache_dir=tmp_path / "cache", download=False
    )
    for loaded, split in ((splits.train, "train"), (splits.test, "test")):
        images, labels = written[split]
        np.testing.assert_array_equal(loaded.images, images)
        np.testing.assert_array_equal(loaded.labels, labels)


# The real copy ---------------------------------------------------------------------


def test_image_folder_labels_follow_cifar_class_order(cifar_dir):
    import tensorflow_datasets as tfds

    cifar10._tensorflow()
    builder = tfds.ImageFolder(str(cifar_dir))
    assert tuple(builder.info.features["label"].names) == CLASSES
    # TFDS lists the files shuffled; every label must name its folder.
    dataset = builder.as_dataset(
        split="test", decoders={"image": tfds.decode.SkipDecoding()}
    )
    folders = set()
    for example in tfds.as_numpy(dataset.take(300)):
        folder = Path(example["image/filename"].decode()).parent.name
        assert CLASSES[example["label"]] == folder
        folders.add(folder)
    assert len(folders) == 10


@pytest.fixture(scope="module")
def real_test(cifar_dir):
    return load_split(find_cifar10(cifar_dir), "test")


def test_real_test_split_order_and_decoding(cifar_dir, real_test):
    assert real_test.images.shape == (10000, 32, 32, 3)
    assert real_test.images.dtype == np.uint8
    np.testing.assert_array_equal(real_test.labels, np.repeat(np.arange(10), 1000))
    # Position 1000 c + i holds test/<class c>/<i>.jpg. TensorFlow's and Pillow's
    # JPEG decoders round the colour conversion differently (by at most a few
    # levels); another image differs by tens of levels on average.
    for label, i in ((0, 0), (3, 0), (5, 500), (9, 999)):
        path = cifar_dir / "test" / CLASSES[label] / f"{i:04d}.jpg"
        reference = np.asarray(Image.open(path).convert("RGB"), np.float64)
        decoded = real_test.images[1000 * label + i].astype(np.float64)
        assert np.abs(decoded - reference).mean() < 2.0
        other = real_test.images[1000 * label + (i + 1) % 1000].astype(np.float64)
        assert np.abs(other - reference).mean() > 10.0


@pytest.fixture(scope="module")
def real_splits(cifar_dir):
    return load_cifar10(cifar_dir, train_size=1000, val_size=500, test_size=1000)


def test_real_splits_shapes_balance_and_disjointness(cifar_dir, real_splits):
    train, val, test = real_splits
    for data, n in ((train, 1000), (val, 500), (test, 1000)):
        assert data.images.shape == (n, 32, 32, 3) and data.images.dtype == np.uint8
        assert data.labels.shape == (n,) and data.labels.dtype == np.int32
        np.testing.assert_array_equal(np.bincount(data.labels), [n // 10] * 10)
    assert np.intersect1d(train.indices, val.indices).size == 0

    # Rows are the examples their indices name in the full splits.
    full = load_cifar10(cifar_dir, val_size=500)
    full_train = np.concatenate([full.train.images, full.val.images])
    positions = np.concatenate([full.train.indices, full.val.indices])
    lookup = np.empty(50000, np.int64)
    lookup[positions] = np.arange(50000)
    np.testing.assert_array_equal(train.images, full_train[lookup[train.indices]])
    np.testing.assert_array_equal(test.images, full.test.images[test.indices])
    # The validation set does not depend on train_size.
    np.testing.assert_array_equal(full.val.indices, val.indices)
    assert len(full.train) == 49500 and len(full.test) == 10000


def test_real_splits_are_seeded(cifar_dir, real_splits):
    again = load_cifar10(cifar_dir, train_size=1000, val_size=500, test_size=1000)
    for a, b in zip(real_splits, again, strict=True):
        np.testing.assert_array_equal(a.indices, b.indices)
        np.testing.assert_array_equal(a.images, b.images)
    other = load_cifar10(
        cifar_dir, train_size=1000, val_size=500, test_size=1000, seed=1
    )
    assert not np.array_equal(other.val.indices, real_splits.val.indices)
    assert not np.array_equal(other.train.indices, real_splits.train.indices)


def test_mean_and_std_match_the_training_images(cifar_dir):
    train = load_split(find_cifar10(cifar_dir), "train")
    # Exact moments from each channel's histogram of the 256 pixel levels.
    pixels = train.images.reshape(-1, 3)
    levels = np.arange(256) / 255.0
    counts = np.stack([np.bincount(pixels[:, c], minlength=256) for c in range(3)])
    mean = counts @ levels / pixels.shape[0]
    std = np.sqrt(counts @ levels**2 / pixels.shape[0] - mean**2)
    np.testing.assert_allclose(mean, MEAN, atol=1e-2, rtol=0)
    np.testing.assert_allclose(std, STD, atol=1e-2, rtol=0)

    # Normalised images have channel means near 0 and deviations near 1; the
    # JPEG copy moves the means by up to 0.0051, about 0.02 once normalised.
    x = np.asarray(normalize(train.images[::10])).reshape(-1, 3)
    np.testing.assert_allclose(x.mean(axis=0), 0.0, atol=3e-2)
    np.testing.assert_allclose(x.std(axis=0), 1.0, atol=3e-2)
