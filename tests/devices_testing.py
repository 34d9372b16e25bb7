"""Runs a script on several simulated CPU devices, for the multi-device tests.

XLA fixes the number of host devices when JAX starts, so the script runs in a
subprocess started with ``XLA_FLAGS=--xla_force_host_platform_device_count=N``.
It reports by printing one line ``RESULT<json>``.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_on_devices(script: str, devices: int = 2, timeout: int = 600) -> dict:
    """Runs ``script`` with ``devices`` host devices; returns its RESULT payload."""
    env = dict(
        os.environ,
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        JAX_PLATFORMS="cpu",
        PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests")]),
    )
    run = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    line = next(x for x in run.stdout.splitlines() if x.startswith("RESULT"))
    out = json.loads(line[len("RESULT") :])
    assert out["devices"] == devices
    return out
