"""A zoo run killed by SIGKILL and restarted with the same command ends with
exactly the weights of an uninterrupted run (real CIFAR-10, tiny Myrtle CNNs)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from symjax.training.checkpoint import RunDirectory
from symjax.training.zoo import list_zoo, load_zoo_member

REPO = Path(__file__).resolve().parents[1]


def _command(out: Path, data: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "experiments.train_zoo",
        "--arch",
        "myrtle",
        "--width",
        "4",
        "--seeds",
        "0-1",
        "--epochs",
        "4",
        "--train-size",
        "1024",
        "--val-size",
        "128",
        "--test-size",
        "128",
        "--log-every",
        "4",
        "--name",
        "m",
        "--out",
        str(out),
        "--data-dir",
        str(data),
        "--no-progress",
    ]


def _env():
    return dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")


@pytest.mark.slow
def test_sigkill_and_restart_give_the_uninterrupted_weights(cifar_dir, tmp_path):
    env = _env()
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    subprocess.run(_command(whole, cifar_dir), env=env, check=True, timeout=600)

    # Kill as soon as the second epoch's training records appear: mid-epoch,
    # after (or while) epoch 1's checkpoint is written.
    proc = subprocess.Popen(
        _command(killed, cifar_dir),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    run = RunDirectory(killed / "m" / "seed_1")
    deadline = time.monotonic() + 600
    while proc.poll() is None and time.monotonic() < deadline:
        metrics = run.path / "metrics.jsonl"
        if metrics.exists() and '"epoch": 2' in metrics.read_text():
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    assert proc.wait(timeout=60) == -signal.SIGKILL, "the run ended before the kill"
    assert not run.done

    subprocess.run(_command(killed, cifar_dir), env=env, check=True, timeout=600)
    members = {p.name: p for p in list_zoo(whole / "m")}
    assert sorted(members) == ["seed_0", "seed_1"]
    for name, path in members.items():
        _, want, info_want = load_zoo_member(path)
        _, got, info_got = load_zoo_member(killed / "m" / name)
        assert info_got["best_epoch"] == info_want["best_epoch"]
        assert info_got["test_accuracy"] == info_want["test_accuracy"]
        for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        epochs = [r["epoch"] for r in RunDirectory(killed / "m" / name).read_metrics()]
        assert epochs == sorted(epochs)
