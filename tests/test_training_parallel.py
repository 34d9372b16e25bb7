"""The same training code on one and on several (simulated) CPU devices.

XLA fixes the number of host devices when JAX starts, so the run with two devices
happens in a subprocess started with
``XLA_FLAGS=--xla_force_host_platform_device_count=2``; it trains three seeds
(padded to four, two per device) on a two-device mesh and on a one-device mesh
and reports both.
"""

import textwrap

import numpy as np
from devices_testing import run_on_devices

from symjax.training import pad_seeds

SCRIPT = textwrap.dedent(
    """
    import json
    import jax
    import numpy as np
    from training_testing import TinyNet, random_splits
    from symjax.training import TrainConfig, fit, seed_mesh

    jax.config.update("jax_threefry_partitionable", False)
    config = TrainConfig(
        arch="tiny", epochs=2, batch_size=16, seeds=(0, 1, 2), eval_batch_size=12
    )
    out = {"devices": jax.device_count()}
    for name, mesh in (("two", seed_mesh()), ("one", seed_mesh(jax.devices()[:1]))):
        result = fit(TinyNet(), config, random_splits(), mesh=mesh, progress=False)
        kernel = result.state.params["conv"]["kernel"]
        out[name] = {
            "shards": len(kernel.addressable_shards),
            "shape": list(kernel.shape),
            "kernel": np.asarray(kernel).ravel().tolist(),
            "records": result.records,
        }
    print("RESULT" + json.dumps(out))
    """
)


def test_two_devices_train_like_one():
    out = run_on_devices(SCRIPT)
    two, one = out["two"], out["one"]
    # Three seeds padded to four: two per device; the padding copy is dropped.
    assert two["shards"] == 2 and one["shards"] == 1
    assert two["shape"][0] == 3 == len(two["records"])
    # Same per-seed computations, placed differently: float32 agreement.
    np.testing.assert_allclose(two["kernel"], one["kernel"], rtol=1e-5, atol=1e-6)
    for a, b in zip(two["records"], one["records"], strict=True):
        assert a["seed"] == b["seed"] and a["best_epoch"] == b["best_epoch"]
        np.testing.assert_allclose(a["test_accuracy"], b["test_accuracy"], atol=1e-12)


def test_pad_seeds_fills_every_device():
    for k in range(1, 9):
        for devices in (1, 2, 3, 4):
            padded, real = pad_seeds(range(k), devices)
            assert real == k and len(padded) % devices == 0
            assert len(padded) - k < devices and set(padded[k:]) <= {k - 1}
