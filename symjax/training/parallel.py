"""Spreading the seed axis of a stacked training state over devices.

All models trained together share one leading *seed* axis of length ``K``. A
one-dimensional device mesh with axis name ``"seed"`` holds every device of every
process; the seed axis of the state and of each data batch is split over it, and
the data that all seeds share (evaluation images) is replicated. The same code
runs on one CPU device, on ``N`` simulated ones
(``XLA_FLAGS=--xla_force_host_platform_device_count=N``), on the GPUs or TPUs of
one host, and on several hosts after ``jax.distributed.initialize()``.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

SEED_AXIS = "seed"


def seed_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A one-dimensional mesh named ``"seed"`` over ``devices`` (default: all)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (SEED_AXIS,))


def seed_sharding(mesh: Mesh) -> NamedSharding:
    """Leading axis split over the mesh."""
    return NamedSharding(mesh, PartitionSpec(SEED_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """A full copy on every device of the mesh."""
    return NamedSharding(mesh, PartitionSpec())


def pad_seeds(seeds: Sequence[int], n_devices: int) -> tuple[tuple[int, ...], int]:
    """Seeds padded to a multiple of the device count.

    The rule: the last seed is repeated until ``len(seeds)`` is a multiple of
    ``n_devices``; the copies train alongside (so every device has the same load)
    and their results are discarded.

    Args:
      seeds: the ``K`` seeds asked for.
      n_devices: devices on the seed axis.

    Returns:
      ``(padded, K)``: the padded seeds and how many of them are real.
    """
    seeds = tuple(int(s) for s in seeds)
    if not seeds:
        raise ValueError("seeds must not be empty.")
    extra = -len(seeds) % n_devices
    return seeds + (seeds[-1],) * extra, len(seeds)


def put_stacked(tree, mesh: Mesh):
    """Host arrays with a leading seed axis, as global arrays split over the mesh.

    Every process passes the full ``[K, ...]`` arrays (they are cheap to build
    deterministically) and keeps only the slices of its own devices.
    """
    sharding = seed_sharding(mesh)

    def put(x):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree.map(put, tree)


def put_replicated(tree, mesh: Mesh):
    """Host arrays, as global arrays copied to every device of the mesh."""
    sharding = replicated(mesh)

    def put(x):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree.map(put, tree)


def to_host(tree):
    """Global arrays as full numpy arrays on every process."""
    if jax.process_count() == 1:
        return jax.tree.map(np.asarray, tree)
    return multihost_utils.process_allgather(tree, tiled=True)


def is_primary() -> bool:
    """Whether this process writes files (process 0)."""
    return jax.process_index() == 0
