"""Stitching pairs spread over several (simulated) CPU devices.

XLA fixes the number of host devices when JAX starts, so the two-device run
happens in a subprocess started with
``XLA_FLAGS=--xla_force_host_platform_device_count=2``. It stitches three pairs
(padded to four, two per device) and then the same three pairs with the pair axis
left unsharded, and reports both.
"""

import textwrap

import numpy as np
from devices_testing import run_on_devices

SCRIPT = textwrap.dedent(
    """
    import json
    import jax
    from test_stitching_train import FAST, _train
    from symjax.data import load_digits, normalize_digits
    from symjax.models import get_model
    from symjax.stitching import StitchConfig, stitch_pairs
    from symjax.stitching import train as stitch_train

    digits = load_digits()
    model = get_model("mlp", widths=(16, 16))
    nets = [_train(model, digits, seed=s, steps=100) for s in range(3)]
    fronts, backs = [nets[0], nets[1], nets[2]], [nets[1], nets[2], nets[0]]
    config = StitchConfig(method="g_relu", epochs=2, finetune_epochs=1, **FAST)

    def run():
        results = stitch_pairs(
            model, fronts, model, backs, "hidden0", digits, config,
            preprocess=normalize_digits,
        )
        return [
            {
                "perm": [int(p) for p in r.stitch_map.perm],
                "scale": [float(s) for s in r.stitch_map.scale],
                "test_accuracy": r.test_accuracy,
                "penalty": r.penalty,
            }
            for r in results
        ]

    out = {"devices": jax.device_count(), "two": run()}
    stitch_train._pair_sharding = lambda k: (k, None)  # one device, no padding
    out["one"] = run()
    print("RESULT" + json.dumps(out))
    """
)


def test_pairs_on_two_devices_stitch_like_on_one():
    out = run_on_devices(SCRIPT)
    two, one = out["two"], out["one"]
    assert len(two) == len(one) == 3  # the padding pair is dropped
    for a, b in zip(two, one, strict=True):
        assert a["perm"] == b["perm"]
        np.testing.assert_allclose(a["scale"], b["scale"], rtol=1e-4)
        np.testing.assert_allclose(a["test_accuracy"], b["test_accuracy"], atol=1e-12)
        np.testing.assert_allclose(a["penalty"], b["penalty"], atol=1e-12)
    # The pairs are different problems: not all the same answer.
    assert len({tuple(r["perm"]) for r in two}) > 1
