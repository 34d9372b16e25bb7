"""CIFAR-10 through tensorflow-datasets, decoded once and cached as arrays.

CIFAR-10 (Krizhevsky, 2009) has 50,000 training and 10,000 test colour images of
32 x 32 pixels in ten classes, indexed in the order of :data:`CLASSES`.

Where the data comes from, first match wins:

1. the ``data_dir`` argument (the experiments' ``--data-dir`` flag);
2. the ``SYMJAX_DATA_DIR`` environment variable;
3. ``../shared/data/cifar10`` relative to the current directory, then to the
   repository;
4. ``tfds.load("cifar10")``'s own data directory, downloading if needed.

A location may hold an image-folder tree ``{train,test}/<class>/*.jpg`` (read with
``tfds.ImageFolder``), a TFDS data directory with a prepared ``cifar10/<version>/``,
or either of these inside a ``cifar10/`` subfolder.

TensorFlow decodes the images. It is imported only when a split is decoded, with
every GPU hidden from it, so it never claims the accelerator JAX uses. The decoded
split is saved as an uncompressed ``.npz`` (no pickle) in ``SYMJAX_CACHE_DIR``
(default ``~/.cache/symjax``) under a name derived from the source's absolute
path, the split and its files' count, total size and newest modification time;
later loads read that file instead.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import re
import time
import zipfile
from pathlib import Path

import jax
import numpy as np

from symjax.data.pipeline import ArrayDataset, Splits, carve_splits, standardize

logger = logging.getLogger(__name__)

CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
"""Class names; a label is a position in this tuple (sorted, as TFDS orders them)."""

MEAN = np.array([0.4914, 0.4822, 0.4465], np.float32)
"""Per-channel (R, G, B) mean of the original CIFAR-10 training images in [0, 1]."""
MEAN.flags.writeable = False

STD = np.array([0.2470, 0.2435, 0.2616], np.float32)
"""Per-channel standard deviation over all training pixels, on the same scale."""
STD.flags.writeable = False

DATA_DIR_ENV = "SYMJAX_DATA_DIR"
CACHE_DIR_ENV = "SYMJAX_CACHE_DIR"

_SPLITS = ("train", "test")
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_CACHE_FORMAT = 1
_REPO = Path(__file__).resolve().parents[2]

_HOW_TO_PROVIDE = (
    "Provide CIFAR-10 in one of these ways: pass --data-dir PATH to the experiment "
    "(data_dir=PATH in Python), or set the environment variable "
    f"{DATA_DIR_ENV}=PATH, where PATH holds an image-folder tree "
    "train/<class>/*.jpg and test/<class>/*.jpg or a TFDS data directory with a "
    "prepared cifar10/; or place the image folders at ../shared/data/cifar10; or "
    "run once on a machine with internet access so that tfds.load('cifar10') can "
    "download it."
)


@dataclasses.dataclass(frozen=True)
class Source:
    """A located copy of CIFAR-10.

    Attributes:
      kind: ``"image_folder"`` (``path/{train,test}/<class>/*``) or ``"tfds"``
        (``path`` is a prepared ``cifar10/<version>`` directory).
      path: absolute path.
    """

    kind: str
    path: Path


def normalize(images) -> jax.Array:
    """Standardises ``[..., 3]`` uint8 CIFAR-10 images with :data:`MEAN`, :data:`STD`.

    Returns:
      ``[..., 3]`` ``float32`` array, ``(images / 255 - MEAN) / STD`` per channel.
    """
    return standardize(images, MEAN, STD)


def _inspect(path: Path) -> Source | None:
    """The CIFAR-10 copy at ``path``, or None when it holds none."""
    path = path.expanduser().resolve()
    for root in (path, path / "cifar10"):
        if all((root / split).is_dir() for split in _SPLITS):
            return Source("image_folder", root)
    versions = {
        tuple(map(int, info.parent.name.split("."))): info.parent
        for info in (path / "cifar10").glob("*/dataset_info.json")
        if re.fullmatch(r"\d+\.\d+\.\d+", info.parent.name)
    }
    if versions:
        return Source("tfds", versions[max(versions)])
    return None


def _default_locations() -> tuple[Path, ...]:
    """The shared-data locations searched when nothing is specified."""
    tail = Path("..", "shared", "data", "cifar10")
    return (Path.cwd() / tail, _REPO / tail)


def _download() -> Source:
    """Prepares CIFAR-10 in TFDS's own data directory, downloading if needed."""
    _tensorflow()
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder("cifar10")
        if not builder.is_prepared():
            logger.warning(
                "No local CIFAR-10 copy was found; downloading it with TFDS into "
                "%s (without network access this fails after TFDS's retries, "
                "about two minutes). To use a local copy instead: --data-dir PATH "
                "or %s=PATH.",
                builder.data_dir,
                DATA_DIR_ENV,
            )
        builder.download_and_prepare()
    except Exception as error:
        raise FileNotFoundError(
            f"No local CIFAR-10 was found and tfds.load('cifar10') failed "
            f"({type(error).__name__}: {error}). {_HOW_TO_PROVIDE}"
        ) from error
    return Source("tfds", Path(builder.data_dir).resolve())


def find_cifar10(
    data_dir: str | os.PathLike | None = None, *, download: bool = True
) -> Source:
    """Locates CIFAR-10 in the order given in the module docstring.

    Args:
      data_dir: an explicit location; when given, nothing else is searched.
      download: whether to fall back on ``tfds.load("cifar10")``'s download when no
        local copy is found.

    Raises:
      FileNotFoundError: when no copy is found; the message says how to provide
        one.
    """
    if data_dir is not None:
        source = _inspect(Path(data_dir))
        if source is None:
            raise FileNotFoundError(
                f"data_dir={str(data_dir)!r} holds no CIFAR-10. {_HOW_TO_PROVIDE}"
            )
        return source

    env = os.environ.get(DATA_DIR_ENV)
    if env:
        source = _inspect(Path(env))
        if source is None:
            raise FileNotFoundError(
                f"{DATA_DIR_ENV}={env!r} holds no CIFAR-10. {_HOW_TO_PROVIDE}"
            )
        return source

    for candidate in _default_locations():
        source = _inspect(candidate)
        if source is not None:
            return source

    if not download:
        raise FileNotFoundError(f"No CIFAR-10 was found. {_HOW_TO_PROVIDE}")
    return _download()


def _tensorflow():
    """Imports TensorFlow with every GPU hidden from it."""
    import tensorflow as tf

    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:
        # Raised when TensorFlow initialised its devices before the first call
        # here; the tensorflow-cpu build this project depends on has no GPU
        # support either way.
        logger.debug("TensorFlow devices were initialised before hiding GPUs")
    return tf


def _fingerprint(source: Source, split: str) -> tuple[int, int, int]:
    """``(count, total bytes, newest mtime in ns)`` of the files behind one split:
    images of an image folder, or all TFDS files. Replacing, adding or removing
    an image changes it, so the cache is rebuilt."""
    if source.kind == "tfds":
        entries = [e for e in os.scandir(source.path) if e.is_file()]
    else:
        entries = [
            f
            for class_dir in (source.path / split).iterdir()
            if class_dir.is_dir()
            for f in os.scandir(class_dir)
            if f.name.lower().endswith(_IMAGE_SUFFIXES)
        ]
    stats = [e.stat() for e in entries]
    return (
        len(stats),
        sum(st.st_size for st in stats),
        max((st.st_mtime_ns for st in stats), default=0),
    )


def _cache_path(source: Source, split: str, cache_dir: Path) -> Path:
    count, size, mtime = _fingerprint(source, split)
    key = f"{_CACHE_FORMAT}|{source.kind}|{source.path}|{split}|{count}|{size}|{mtime}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_dir / f"cifar10-{split}-{digest}.npz"


def _check_classes(names, where: str) -> None:
    if tuple(names) != CLASSES:
        raise ValueError(
            f"{where} has classes {list(names)}, expected CIFAR-10's {list(CLASSES)}; "
            "point data_dir at a CIFAR-10 copy."
        )


def _decode_image_folder(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Decodes ``root/split/<class>/*`` with ``tfds.ImageFolder``.

    Examples are returned sorted by (class folder, file name), independent of the
    order in which TFDS lists them.
    """
    tf = _tensorflow()
    import tensorflow_datasets as tfds

    builder = tfds.ImageFolder(str(root), shape=(32, 32, 3), dtype=tf.uint8)
    _check_classes(builder.info.features["label"].names, f"image folder {root}")
    dataset = builder.as_dataset(split=split, shuffle_files=False)
    images, labels, names = [], [], []
    for batch in tfds.as_numpy(dataset.batch(1024)):
        images.append(batch["image"])
        labels.append(batch["label"])
        names.extend(Path(f.decode()).parts[-2:] for f in batch["image/filename"])
    order = sorted(range(len(names)), key=names.__getitem__)
    return np.concatenate(images)[order], np.concatenate(labels)[order]


def _decode_tfds(path: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Decodes one split of a prepared TFDS ``cifar10/<version>`` directory."""
    _tensorflow()
    import tensorflow_datasets as tfds

    builder = tfds.builder_from_directory(str(path))
    _check_classes(builder.info.features["label"].names, f"TFDS dataset {path}")
    dataset = builder.as_dataset(split=split, shuffle_files=False)
    images, labels = [], []
    for batch in tfds.as_numpy(dataset.batch(1024)):
        images.append(batch["image"])
        labels.append(batch["label"])
    return np.concatenate(images), np.concatenate(labels)


def _decode(source: Source, split: str) -> tuple[np.ndarray, np.ndarray]:
    if source.kind == "tfds":
        return _decode_tfds(source.path, split)
    return _decode_image_folder(source.path, split)


def _read_cache(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as stored:
            return stored["images"], stored["labels"]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
        logger.warning("ignoring unreadable cache %s (%s)", path, error)
        return None


def _write_cache(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Writes atomically, so concurrent loaders never read a partial file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            np.savez(f, images=images, labels=labels)
        os.replace(tmp, path)
    except OSError as error:
        logger.warning("could not write cache %s (%s)", path, error)
        tmp.unlink(missing_ok=True)


def default_cache_dir() -> Path:
    """``$SYMJAX_CACHE_DIR``, or ``~/.cache/symjax`` when it is unset."""
    return Path(os.environ.get(CACHE_DIR_ENV) or "~/.cache/symjax").expanduser()


def load_split(
    source: Source, split: str, *, cache_dir: str | os.PathLike | None = None
) -> ArrayDataset:
    """One full split of CIFAR-10, from the cache or decoded (and then cached).

    Args:
      source: from :func:`find_cifar10`.
      split: ``"train"`` or ``"test"``.
      cache_dir: where decoded splits are kept; default :func:`default_cache_dir`.

    Returns:
      ``ArrayDataset`` named ``"cifar10/<split>"`` with ``[n, 32, 32, 3]`` uint8
      images; an image folder's examples are ordered by class, then file name.
    """
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}.")
    cache_dir = default_cache_dir() if cache_dir is None else Path(cache_dir)
    cache = _cache_path(source, split, cache_dir)

    arrays = _read_cache(cache)
    if arrays is None:
        start = time.perf_counter()
        arrays = _decode(source, split)
        logger.info(
            "decoded %d %s images from %s in %.1f s",
            arrays[1].shape[0],
            split,
            source.path,
            time.perf_counter() - start,
        )
        _write_cache(cache, *arrays)

    images, labels = arrays
    if images.shape[1:] != (32, 32, 3) or images.dtype != np.uint8:
        raise ValueError(
            f"{source.path} decoded to images {images.shape} {images.dtype}, "
            "expected [n, 32, 32, 3] uint8; point data_dir at a CIFAR-10 copy."
        )
    return ArrayDataset(images, labels.astype(np.int32), f"cifar10/{split}")


def load_cifar10(
    data_dir: str | os.PathLike | None = None,
    *,
    train_size: int | None = None,
    val_size: int = 5000,
    test_size: int | None = None,
    seed: int = 0,
    download: bool = True,
    cache_dir: str | os.PathLike | None = None,
) -> Splits:
    """CIFAR-10 as training, validation and test arrays.

    The validation set is a class-balanced draw of ``val_size`` training images;
    the training set is the remaining training images (or a class-balanced subset
    of ``train_size`` of them); the test set is the test split (or a
    class-balanced subset of ``test_size``). All choices are functions of ``seed``
    alone, and the validation set does not depend on ``train_size``.

    Args:
      data_dir: where CIFAR-10 lives; see the module docstring for the search
        order when ``None``.
      train_size: training examples to keep, or ``None`` for all remaining.
      val_size: validation examples carved from the training split.
      test_size: test examples to keep, or ``None`` for all 10,000.
      seed: non-negative integer that fixes every choice.
      download: whether ``tfds.load`` may download when no local copy exists.
      cache_dir: where decoded splits are kept; see :func:`default_cache_dir`.

    Returns:
      ``Splits(train, val, test)`` of ``ArrayDataset``s with ``[n, 32, 32, 3]``
      uint8 images and ``[n]`` int32 labels; each dataset's ``indices`` locate
      its examples in the full split.

    Raises:
      FileNotFoundError: no data was found; the message says how to provide it.

    Note:
      The local copy in ``../shared/data/cifar10`` stores JPEGs, slightly lossy
      compared with the original release that ``tfds.load`` downloads: its
      training-set channel means differ from :data:`MEAN` by up to 0.0051 and its
      deviations from :data:`STD` by up to 0.002, and accuracies on it are
      expected to be a little lower.
    """
    source = find_cifar10(data_dir, download=download)
    train = load_split(source, "train", cache_dir=cache_dir)
    test = load_split(source, "test", cache_dir=cache_dir)
    return carve_splits(
        train,
        test,
        train_size=train_size,
        val_size=val_size,
        test_size=test_size,
        seed=seed,
        name="cifar10",
    )
