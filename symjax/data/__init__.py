"""Datasets and input pipelines: CIFAR-10 through TFDS, and scikit-learn's digits."""

from symjax.data.cifar10 import (
    CLASSES,
    MEAN,
    STD,
    Source,
    default_cache_dir,
    find_cifar10,
    load_cifar10,
    load_split,
    normalize,
)
from symjax.data.digits import load_digits, normalize_digits
from symjax.data.pipeline import (
    ArrayDataset,
    Splits,
    augment,
    balanced_indices,
    batch_indices,
    carve_splits,
    epoch_permutation,
    iterate_batches,
    standardize,
)

__all__ = [
    "CLASSES",
    "MEAN",
    "STD",
    "ArrayDataset",
    "Source",
    "Splits",
    "augment",
    "balanced_indices",
    "batch_indices",
    "carve_splits",
    "default_cache_dir",
    "epoch_permutation",
    "find_cifar10",
    "iterate_batches",
    "load_cifar10",
    "load_digits",
    "load_split",
    "normalize",
    "normalize_digits",
    "standardize",
]
