"""Rotation-penalty trials spread over several (simulated) CPU devices.

The two-device run happens in a subprocess started with
``XLA_FLAGS=--xla_force_host_platform_device_count=2`` (XLA fixes the device count
when JAX starts). Three trials, padded to four (two per device), each at two
learning rates, are run on both devices and then on the first device alone.
"""

import json
import textwrap

import numpy as np
from devices_testing import run_on_devices

SCRIPT = textwrap.dedent(
    """
    import json
    import jax
    from test_rotation_penalty import _myrtle, _preprocess, _teacher_splits
    from symjax import rotation_penalty as rp

    model, variables, _ = _myrtle("relu")
    config = rp.FinetuneConfig(
        epochs=2, batch_size=32, learning_rate=(3e-3, 1e-2), eval_batch_size=40,
        augment_pad=0,
    )
    splits = _teacher_splits()
    out = {"devices": jax.device_count()}
    for name, devices in (("two", None), ("one", jax.devices()[:1])):
        out[name] = rp.run_trials(
            model, variables, splits, "block1", "orthogonal", [0, 1, 2], config,
            preprocess=_preprocess, devices=devices,
        )
    print("RESULT" + json.dumps(out))
    """
)


def test_trials_on_two_devices_match_one():
    out = run_on_devices(SCRIPT)
    two, one = out["two"], out["one"]
    assert len(two) == len(one) == 3  # the padding trial is dropped
    for a, b in zip(two, one, strict=True):
        assert a["seed"] == b["seed"] and a["best_epoch"] == b["best_epoch"]
        assert a["learning_rate"] == b["learning_rate"]
        assert a["acc_after"] == b["acc_after"]
        np.testing.assert_allclose(
            a["val_acc_by_rate"], b["val_acc_by_rate"], atol=1e-12
        )
        np.testing.assert_allclose(
            a["train_loss_by_rate"], b["train_loss_by_rate"], rtol=1e-4
        )
    assert len({json.dumps(r["train_loss"]) for r in two}) == 3  # distinct trials
