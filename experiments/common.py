"""Pieces shared by the experiment scripts: process set-up, resumable result files,
zoo access and confidence intervals."""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from symjax.compilation import enable_compilation_cache


def start() -> None:
    """Logging at INFO with timestamps, and the persistent compilation cache.

    Importing orbax installs a root handler at WARNING, which would make a plain
    ``basicConfig`` a no-op, so the handler is replaced; orbax's per-save INFO
    lines (through absl) are kept out. Safe to call more than once.
    """
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    logging.getLogger("absl").setLevel(logging.WARNING)
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
    enable_compilation_cache()


class RecordStore:
    """Results as JSON lines, one record per finished job, appended as jobs finish.

    A job is identified by ``key_fields`` of its record; rerunning an experiment
    skips jobs whose key is already stored, so an interrupted run loses at most the
    job in flight.
    """

    def __init__(self, path: Path, key_fields: Sequence[str]):
        self.path = Path(path)
        self.key_fields = tuple(key_fields)
        self._keys = {self._key(r) for r in self.records()}

    def _key(self, record: Mapping) -> str:
        return json.dumps([record.get(k) for k in self.key_fields], sort_keys=True)

    def has(self, key: Mapping) -> bool:
        return self._key(key) in self._keys

    def add(self, record: Mapping) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # A line cut short by a kill has no newline: start on a fresh line, so the
        # new record is not glued onto it (and lost with it).
        cut = False
        if self.path.exists() and self.path.stat().st_size:
            with open(self.path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                cut = f.read(1) != b"\n"
        with open(self.path, "a") as f:
            f.write(("\n" if cut else "") + json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self._keys.add(self._key(record))

    def records(self) -> list[dict]:
        if not self.path.exists():
            return []
        out = []
        with open(self.path) as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    # A line cut short by a kill: that job reruns.
                    continue
        return out


def mean_ci(values: Iterable[float], z: float = 1.96) -> tuple[float, float]:
    """Mean and the half-width of a normal-approximation 95% confidence interval
    (zero for a single value)."""
    v = np.asarray(list(values), dtype=np.float64)
    if v.size == 0:
        return math.nan, math.nan
    if v.size == 1:
        return float(v[0]), 0.0
    return float(v.mean()), float(z * v.std(ddof=1) / math.sqrt(v.size))


def seed_pairs(items: Sequence, k: int) -> list[tuple]:
    """The first ``k`` pairs of ``items`` in round-robin order.

    Rounds of the circle method each pair every item at most once, so the first
    ``len(items) // 2`` pairs are disjoint (independent models) and, beyond them,
    every item is used about equally often, instead of the first item joining
    every early pair as in lexicographic order. Every pair appears once when
    ``k`` reaches ``n (n - 1) / 2``.
    """
    ring = list(range(len(items))) + ([None] if len(items) % 2 else [])
    n = len(ring)
    pairs = []
    for _ in range(n - 1):
        for i in range(n // 2):
            a, b = ring[i], ring[n - 1 - i]
            if a is not None and b is not None:
                pairs.append((items[min(a, b)], items[max(a, b)]))
        ring = [ring[0], ring[-1], *ring[1:-1]]
    return pairs[:k]


def zoo_members(zoo: Path) -> dict[int, Path]:
    """Seed -> run directory of the finished members of one architecture's zoo."""
    from symjax.training.zoo import list_zoo

    members = list_zoo(zoo)
    if len({m.parent for m in members}) > 1:
        raise ValueError(
            f"{zoo} holds several architectures; pass one architecture's directory "
            f"(one of {sorted({m.parent.name for m in members})})."
        )
    return {int(m.name.removeprefix("seed_")): m for m in members}


def load_member(path: Path):
    """``(model, variables, info)`` of a finished zoo member."""
    from symjax.training.zoo import load_zoo_member

    return load_zoo_member(path)
