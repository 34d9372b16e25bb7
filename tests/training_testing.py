"""A tiny model, random data and a compilation cache for the training tests."""

import contextlib

import flax.linen as nn
import jax
import numpy as np

from symjax.data import ArrayDataset, Splits


class TinyNet(nn.Module):
    """Convolution, BatchNorm, ReLU, max pooling and a dense head on 8x8 images."""

    classes: int = 3

    @nn.compact
    def __call__(self, x, train=False):
        h = nn.Conv(4, (3, 3), use_bias=False, name="conv")(x)
        h = nn.BatchNorm(use_running_average=not train, momentum=0.9, name="bn")(h)
        h = nn.max_pool(nn.relu(h), (2, 2), strides=(2, 2)).mean(axis=(1, 2))
        return nn.Dense(self.classes, name="head")(h)


def random_splits(n_train=64, n_val=16, n_test=20, classes=3, seed=0) -> Splits:
    """Random ``8 x 8 x 3`` uint8 images whose label is their brightest channel,
    so that a small network can learn something."""
    rng = np.random.default_rng(seed)

    def dataset(n, name):
        images = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
        labels = images.reshape(n, -1, 3).mean(1).argmax(-1) % classes
        return ArrayDataset(images, labels.astype(np.int32), name)

    return Splits(
        dataset(n_train, "train"), dataset(n_val, "val"), dataset(n_test, "test")
    )


@contextlib.contextmanager
def compilation_cache(directory):
    """A persistent compilation cache in ``directory``, so that the identical steps
    of repeated runs compile once (the slow part of these tests on a shared CPU)."""
    names = (
        "jax_compilation_cache_dir",
        "jax_persistent_cache_min_compile_time_secs",
        "jax_persistent_cache_min_entry_size_bytes",
    )
    old = {name: getattr(jax.config, name) for name in names}
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    try:
        yield
    finally:
        for name, value in old.items():
            jax.config.update(name, value)
