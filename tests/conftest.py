"""Shared test configuration.

Rank promotion is made an error so that a `(d,)` scale meeting a `(d, k)`
kernel on the wrong axis fails loudly instead of broadcasting silently.
float64 is enabled so that exact identities can be checked at tight tolerance;
tests that exercise float32 paths ask for it explicitly.
"""

import os
from pathlib import Path

import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_enable_x64", True)

REPO = Path(__file__).resolve().parents[1]


def cifar10_dir() -> Path | None:
    """The local CIFAR-10 copy used by tests, or None when there is none."""
    candidates = [
        os.environ.get("SYMJAX_DATA_DIR"),
        REPO.parent / "shared/data/cifar10",
    ]
    for c in candidates:
        if c and (Path(c) / "test").is_dir():
            return Path(c)
    return None


@pytest.fixture(scope="session")
def cifar_dir() -> Path:
    """The real CIFAR-10 copy. Tests that need it are skipped where there is none,
    except under ``SYMJAX_REQUIRE_DATA=1`` (set by CI), where they fail: a green CI
    run then always includes the real-data tests."""
    d = cifar10_dir()
    if d is None:
        message = "no local CIFAR-10 copy (set SYMJAX_DATA_DIR)"
        if os.environ.get("SYMJAX_REQUIRE_DATA") == "1":
            pytest.fail(message + "; SYMJAX_REQUIRE_DATA=1 asks for one")
        pytest.skip(message)
    return d
