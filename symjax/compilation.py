"""A persistent XLA compilation cache for experiments.

On a CPU, compiling a vmapped ResNet20 training step takes minutes and running it
seconds; the experiments compile the same programs in every process (one per
step of :mod:`experiments.reproduce`, one per rerun). JAX's persistent cache keeps
the compiled executables on disk, keyed by the program, the JAX version and the
device, so a program compiles once per machine. A second process found the
ResNet20 step in 8 s where compiling it took 180 s.

The cache lives in ``$SYMJAX_CACHE_DIR/jax`` (default ``~/.cache/symjax/jax``);
delete the folder to reclaim the space. Stale entries are never read, since
the key covers everything that the executable depends on.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import jax

from symjax.data.cifar10 import default_cache_dir

logger = logging.getLogger(__name__)

_OPTIONS = (
    "jax_compilation_cache_dir",
    "jax_persistent_cache_min_compile_time_secs",
    "jax_persistent_cache_min_entry_size_bytes",
)


def enable_compilation_cache(
    directory: str | os.PathLike | None = None, *, min_compile_seconds: float = 0.5
) -> Path:
    """Turns on JAX's persistent compilation cache for this process.

    Args:
      directory: where executables are kept; default ``<SYMJAX_CACHE_DIR>/jax``.
      min_compile_seconds: programs that compile faster than this are not stored
        (they would cost more to read than to compile).

    Returns:
      The cache folder.
    """
    path = Path(directory) if directory else default_cache_dir() / "jax"
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_seconds)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    logger.info("persistent compilation cache in %s", path)
    return path


@contextlib.contextmanager
def compilation_cache(
    directory: str | os.PathLike | None = None, *, min_compile_seconds: float = 0.5
):
    """:func:`enable_compilation_cache` for the duration of a ``with`` block; the
    previous settings are restored afterwards."""
    old = {name: getattr(jax.config, name) for name in _OPTIONS}
    try:
        yield enable_compilation_cache(
            directory, min_compile_seconds=min_compile_seconds
        )
    finally:
        for name, value in old.items():
            jax.config.update(name, value)
