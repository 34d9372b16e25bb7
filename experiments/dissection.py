"""Interpretable units of rotated bases (paper Section 6, Figure 3).

Does the activation basis matter for interpretability? For three CIFAR-10
models, this script counts the units of a hidden layer that detect a concept
(network dissection, Bau et al. 2017) in the layer's own basis and in the bases
``Q^alpha`` rotated part of the way toward Haar-random rotations ``Q``. The paper
finds that the count falls with ``alpha`` only where a ReLU acts on the layer.

Models (trained into ``--zoo`` with :mod:`symjax.training` when missing):

- ``resnet20``: ResNet20 (ReLU on every block's output);
- ``resnet20_noact``: the same without the activation on the residual output;
- ``convnext``: a small ConvNeXt-style network (depthwise convolution,
  LayerNorm, inverted bottleneck with GELU, linear residual stream).

All three are trained with the ``"cpu"`` recipe, SGD with Nesterov momentum:
Adam's per-coordinate step sizes can single out a basis by themselves, which
would confound the comparison. The ConvNeXt is built without its layer scale,
whose ``1e-6`` initial gates would keep SGD from training the blocks.

Layers (``--sites``): ``residual`` is the last block's output, the last-stage
residual stream; ``inner`` is the activation inside that block (ReLU in the
ResNets, GELU in the ConvNeXt).

Outputs in ``--out``:

- ``dissection.jsonl``: one row per (model, layer, alpha, rotation), appended as
  rotations finish, so a rerun skips the finished rows; ``rotation`` null is the
  layer's own basis with no rotation matrix (the reference for ``alpha = 0``);
- ``dissection.csv``: the same rows, flat;
- ``summary.csv``: mean and 95% t-interval over rotations per alpha;
- ``figure3.png``: interpretable units (as a fraction of the layer's units) and
  mean best IoU against alpha;
- ``config.json`` and ``models.json``: the settings and the models used.

Usage::

    python -m experiments.dissection --zoo zoo/dissection --out reports/dissection
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import functools
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from experiments import common
from experiments.common import RecordStore
from symjax.data import load_cifar10, normalize
from symjax.dissection import (
    ConceptDataset,
    color_concepts,
    load_color_table,
    read_broden,
    synthetic_concepts,
)
from symjax.dissection.experiment import (
    ALPHAS,
    alpha_curve,
    concatenate_concepts,
    sweep_layer,
)
from symjax.models import get_model

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One of the compared models.

    Attributes:
      arch: the :func:`symjax.models.get_model` name.
      label: the name in the figure.
      residual_activation: whether an activation acts on the residual output.
    """

    arch: str
    label: str
    residual_activation: bool


MODELS = {
    "resnet20": ModelSpec("resnet20", "ResNet20", True),
    "resnet20_noact": ModelSpec("resnet20", "ResNet20, no act. on output", False),
    "convnext": ModelSpec("convnext", "ConvNeXt (GELU, linear stream)", False),
}
SITES = {
    "residual": "last-stage residual output",
    "inner": "inside the last block",
}
KEY_FIELDS = ("model", "layer", "alpha", "rotation")
# Settings that change the rows: a rerun into the same --out must keep them.
ROW_SETTINGS = (
    "concepts",
    "num_images",
    "seed",
    "quantile_at",
    "untrained",
    "width_multiplier",
    "convnext_width",
    "epochs",
    "train_size",
    "train_seed",
)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--zoo",
        type=Path,
        default=Path("zoo/dissection"),
        help="zoo root; missing models are trained there",
    )
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--sites", nargs="+", default=list(SITES), choices=list(SITES))
    p.add_argument(
        "--concepts",
        default="mixed",
        help="colors | synthetic | mixed | broden:<folder>",
    )
    p.add_argument(
        "--num-images", type=int, default=1000, help="images per concept source"
    )
    p.add_argument("--alphas", type=float, nargs="+", default=list(ALPHAS))
    p.add_argument("--num-rotations", type=int, default=3)
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the rotations, concept images and subsets",
    )
    p.add_argument("--quantile-at", default="features", choices=["features", "masks"])
    p.add_argument(
        "--plot-threshold",
        type=float,
        default=0.04,
        help="IoU threshold of the figure's unit counts",
    )
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--data-dir", type=Path, default=None)
    # Training at CPU scale.
    p.add_argument(
        "--untrained",
        action="store_true",
        help="dissect freshly initialised models instead of a zoo",
    )
    p.add_argument("--width-multiplier", type=float, default=1.0)
    p.add_argument("--convnext-width", type=int, default=16)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--train-size", type=int, default=10000)
    p.add_argument("--val-size", type=int, default=1000)
    p.add_argument("--test-size", type=int, default=2000)
    p.add_argument("--train-seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.num_rotations < 1 or args.num_images < 1:
        p.error("--num-rotations and --num-images must be positive")
    if any(not 0.0 <= a <= 1.0 for a in args.alphas):
        p.error("--alphas must lie in [0, 1]")
    args.alphas = sorted({round(a, 6) for a in args.alphas})
    return args


def model_config(name: str, args) -> dict:
    """The :func:`symjax.models.get_model` configuration of model ``name``."""
    if MODELS[name].arch == "resnet20":
        return {
            "width_multiplier": args.width_multiplier,
            "residual_activation": MODELS[name].residual_activation,
        }
    return {"width": args.convnext_width, "layer_scale_init": None}


def layer_name(model, site: str) -> str:
    """The activation layer of ``site`` in ``model``."""
    last = model.layers[-1]
    return last if site == "residual" else f"{last}.inner"


# Concept data.


def load_concepts(spec: str, num_images: int, seed: int, data_dir) -> ConceptDataset:
    """The concept set named by ``--concepts``.

    ``colors``: the eleven colour terms on a class-balanced subset of the CIFAR-10
    test split, the models' own image distribution. ``synthetic``: the generated
    set (textures, shapes, outlines, scenes, colours), whose concepts are exact
    but whose images are not CIFAR-like. ``mixed`` (default): both, so that
    pixel concepts come from in-distribution images and shape and texture
    concepts exist at all. ``broden:<folder>``: a Broden-format folder (its first
    ``num_images`` images).
    """
    if spec.startswith("broden:"):
        dataset = read_broden(spec.split(":", 1)[1])
        if len(dataset) > num_images:
            dataset = _Subset(dataset, range(num_images))
        return dataset
    table = load_color_table()
    parts = []
    if spec in ("colors", "mixed"):
        test = load_cifar10(data_dir, val_size=0, test_size=num_images, seed=seed).test
        names = [f"cifar10/test/{i:05d}" for i in test.indices]
        parts.append(
            color_concepts(test.images, table, names=names, splits=["test"] * len(test))
        )
    if spec in ("synthetic", "mixed"):
        parts.append(synthetic_concepts(num_images, seed, color_table=table))
    if not parts:
        raise ValueError(
            f"--concepts must be colors, synthetic, mixed or broden:<folder>, "
            f"got {spec!r}."
        )
    return parts[0] if len(parts) == 1 else concatenate_concepts(parts)


class _Subset(ConceptDataset):
    """The first images of a concept dataset (a view)."""

    def __init__(self, base: ConceptDataset, indices):
        self._base, self._idx = base, list(indices)

    concepts = property(lambda self: self._base.concepts)
    categories = property(lambda self: self._base.categories)
    image_level_categories = property(lambda self: self._base.image_level_categories)
    layer_categories = property(lambda self: self._base.layer_categories)
    slot_categories = property(lambda self: self._base.slot_categories)
    image_shape = property(lambda self: self._base.image_shape)
    mask_shape = property(lambda self: self._base.mask_shape)

    def __len__(self):
        return len(self._idx)

    def record(self, i):
        return self._base.record(self._idx[i])

    def batches(self, batch_size, indices=None):
        idx = self._idx if indices is None else [self._idx[i] for i in indices]
        return self._base.batches(batch_size, idx)


# Models and features.


def load_models(args) -> dict[str, tuple]:
    """``name -> (model, variables, info)``, training missing zoo members.

    With ``--untrained`` the models are freshly initialised from the
    ``unsafe_rbg`` generator, whose key derivation compiles in seconds where the
    default threefry takes half a minute on the CPU; the weights therefore differ
    from a zoo member's initialisation at the same seed.
    """
    out = {}
    splits = None
    for name in args.models:
        spec, cfg = MODELS[name], model_config(name, args)
        if args.untrained:
            model = get_model(spec.arch, **cfg)
            x = jnp.zeros((1, 32, 32, 3), jnp.float32)
            init = jax.jit(
                lambda key, model=model, x=x: model.init(key, x, train=False)
            )
            variables = init(jax.random.key(args.train_seed, impl="unsafe_rbg"))
            out[name] = (model, variables, {"trained": False, "model": cfg})
            continue

        from symjax.training import TrainConfig, load_zoo_member, member_dir, train_zoo

        config = TrainConfig(
            arch=spec.arch,
            model=cfg,
            recipe="cpu",
            epochs=args.epochs,
            seeds=(args.train_seed,),
            train_size=args.train_size,
            val_size=args.val_size,
            test_size=args.test_size,
        )
        path = member_dir(args.zoo, config.resolved().run_name, args.train_seed)
        if not (path / "done.json").exists():
            if splits is None:
                splits = load_cifar10(
                    args.data_dir,
                    train_size=args.train_size,
                    val_size=args.val_size,
                    test_size=args.test_size,
                    seed=config.split_seed,
                )
            start = time.perf_counter()
            train_zoo(config, splits, args.zoo)
            log.info("trained %s in %.0f s", name, time.perf_counter() - start)
        model, variables, info = load_zoo_member(path)
        stored = {
            k: v for k, v in info["config"].items() if k not in ("seed", "input_shape")
        }
        if not TrainConfig.from_dict(stored).same_run(config):
            raise ValueError(
                f"{path} was trained with another configuration; pass another --zoo."
            )
        out[name] = (model, variables, info)
    return out


def layer_features(
    model, variables, dataset: ConceptDataset, layers: Sequence[str], batch_size: int
) -> dict[str, np.ndarray]:
    """Activations ``[N, h, w, U]`` of ``layers`` on the dataset, in inference mode.

    One jitted forward pass per batch on normalised images; every batch has the
    same shape, so it compiles once.
    """

    @jax.jit
    def run(variables, images):
        _, state = model.apply(
            variables, normalize(images), train=False, mutable=["intermediates"]
        )
        found = state["intermediates"]
        missing = sorted(set(layers) - set(found))
        if missing:
            raise ValueError(
                f"layers {missing} are not sown by the model; it sows {sorted(found)}."
            )
        return {k: found[k][0] for k in layers}

    out: dict[str, list[np.ndarray]] = {k: [] for k in layers}
    for batch in dataset.batches(batch_size):
        feats = run(variables, jnp.asarray(batch.images))
        for k in layers:
            out[k].append(np.asarray(feats[k][: batch.num_valid], np.float32))
    return {k: np.concatenate(v) for k, v in out.items()}


# Outputs.


def write_csv(records: list[dict], path: Path) -> None:
    """The rows, flat (the nested per-category counts are left to the JSONL)."""
    fields: list[str] = []
    for r in records:
        fields += [
            k for k, v in r.items() if k not in fields and not isinstance(v, dict)
        ]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fields, extrasaction="ignore")
        w.writeheader()
        for r in records:
            w.writerow(r)


def summarize(records: list[dict], threshold: float) -> list[dict]:
    """Mean and 95% t-interval over rotations per (model, layer, alpha)."""
    metric = f"interpretable@{threshold:g}"
    rows = []
    groups = sorted({(r["model"], r["layer"]) for r in records})
    for model, layer in groups:
        mine = [r for r in records if (r["model"], r["layer"]) == (model, layer)]
        own = [r for r in mine if r["rotation"] is None]
        alphas, count, count_ci = alpha_curve(mine, metric)
        _, iou, iou_ci = alpha_curve(mine, "mean_best_iou")
        for k, a in enumerate(alphas):
            rows.append(
                {
                    "model": model,
                    "layer": layer,
                    "site": mine[0]["site"],
                    "num_units": mine[0]["num_units"],
                    "alpha": float(a),
                    "rotations": sum(
                        1 for r in mine if r["alpha"] == a and r["rotation"] is not None
                    ),
                    metric: count[k],
                    f"{metric}_ci": count_ci[k],
                    "mean_best_iou": iou[k],
                    "mean_best_iou_ci": iou_ci[k],
                    "own_basis_" + metric: own[0][metric] if own else None,
                }
            )
    return rows


def plot_figure3(records: list[dict], path: Path, threshold: float) -> Path:
    """Interpretable fraction and mean best IoU against alpha, per model and site."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = f"interpretable@{threshold:g}"
    sites = [s for s in SITES if any(r["site"] == s for r in records)]
    models = [m for m in MODELS if any(r["model"] == m for r in records)]
    colors = dict(zip(MODELS, ("tab:red", "tab:blue", "tab:green"), strict=True))
    fig, axes = plt.subplots(
        2, len(sites), figsize=(5.2 * len(sites), 7.2), squeeze=False, sharex=True
    )
    for j, site in enumerate(sites):
        for m in models:
            mine = [r for r in records if r["model"] == m and r["site"] == site]
            if not mine:
                continue
            U = mine[0]["num_units"]
            act = "ReLU" if MODELS[m].arch == "resnet20" else "GELU"
            on = MODELS[m].residual_activation if site == "residual" else True
            label = f"{MODELS[m].label}: {U} units, {act if on else 'no activation'}"
            for i, (field, scale) in enumerate(
                ((metric, 1.0 / U), ("mean_best_iou", 1.0))
            ):
                a, mean, half = alpha_curve(mine, field)
                ax = axes[i, j]
                ax.plot(a, mean * scale, "o-", color=colors[m], label=label)
                # Counts and IoUs are non-negative: the band is cut at 0.
                ax.fill_between(
                    a,
                    np.maximum(mean - half, 0.0) * scale,
                    (mean + half) * scale,
                    color=colors[m],
                    alpha=0.18,
                    linewidth=0,
                )
        axes[0, j].set_title(SITES[site])
        axes[0, j].set_ylabel(f"fraction of units with IoU > {threshold:g}")
        axes[1, j].set_ylabel("mean best IoU over units")
        axes[1, j].set_xlabel(r"rotation $\alpha$ (basis $Q^\alpha$)")
        axes[0, j].set_ylim(bottom=0)
        axes[0, j].legend(fontsize=8, loc="best")
        for ax in axes[:, j]:
            ax.grid(alpha=0.3)
    n_rot = len({r["rotation"] for r in records if r["rotation"] is not None})
    fig.suptitle(
        f"Network dissection of rotated bases (mean and 95% interval over "
        f"{n_rot} random rotations)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def check_settings(out: Path, args) -> None:
    """Writes ``config.json``, or checks that a rerun keeps the row settings."""
    settings = {k: getattr(args, k) for k in ROW_SETTINGS}
    path = out / "config.json"
    if path.exists():
        old = json.loads(path.read_text())
        changed = sorted(k for k in ROW_SETTINGS if old.get(k) != settings[k])
        if changed:
            raise ValueError(
                f"{out} holds rows computed with other settings ({changed}); pass "
                "another --out or the same settings."
            )
    full = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    path.write_text(json.dumps(full, indent=2, sort_keys=True))


def dissect_model(name, model, variables, dataset, args, store) -> None:
    """Adds to ``store`` the rows of one model that are not there yet."""

    def done(alpha, rotation, layer) -> bool:
        key = {"model": name, "layer": layer, "alpha": alpha, "rotation": rotation}
        return store.has(key)

    layers = {site: layer_name(model, site) for site in args.sites}
    jobs = [(a, r) for a in args.alphas for r in range(args.num_rotations)]
    todo = {
        site: layer
        for site, layer in layers.items()
        if not done(0.0, None, layer) or not all(done(a, r, layer) for a, r in jobs)
    }
    if not todo:
        return
    start = time.perf_counter()
    feats = layer_features(
        model, variables, dataset, list(todo.values()), args.batch_size
    )
    log.info("%s features in %.1f s", name, time.perf_counter() - start)

    for site, layer in todo.items():
        start = time.perf_counter()
        sweep = sweep_layer(
            feats[layer],
            dataset,
            args.alphas,
            range(args.num_rotations),
            seed=args.seed,
            skip=functools.partial(done, layer=layer),
            batch_size=args.batch_size,
            quantile_at=args.quantile_at,
        )
        for rows in sweep:
            seconds = time.perf_counter() - start
            for row in rows:
                store.add(
                    {
                        "model": name,
                        "layer": layer,
                        "site": site,
                        **row,
                        "seconds": seconds,
                    }
                )
            counts = [r[f"interpretable@{args.plot_threshold:g}"] for r in rows]
            log.info(
                "%s %s rotation %s: %s (%.0f s)",
                name,
                layer,
                rows[0]["rotation"],
                counts,
                seconds,
            )
            start = time.perf_counter()


def main(argv: Sequence[str] | None = None) -> dict:
    """Runs the experiment; returns the paths written and the summary rows."""
    args = parse_args(argv)
    common.start()
    args.out.mkdir(parents=True, exist_ok=True)
    check_settings(args.out, args)
    store = RecordStore(args.out / "dissection.jsonl", KEY_FIELDS)

    # Concept data and models.
    start = time.perf_counter()
    dataset = load_concepts(args.concepts, args.num_images, args.seed, args.data_dir)
    log.info(
        "%d concept images (%s) in %.1f s",
        len(dataset),
        args.concepts,
        time.perf_counter() - start,
    )
    models = load_models(args)
    (args.out / "models.json").write_text(
        json.dumps(
            {
                n: {k: v for k, v in info.items() if k != "path"}
                | {"path": str(info.get("path", ""))}
                for n, (_, _, info) in models.items()
            },
            indent=2,
            default=str,
        )
    )

    # Dissect every (model, layer) along the rotation paths.
    for name, (model, variables, _) in models.items():
        dissect_model(name, model, variables, dataset, args, store)

    # Tables and the figure.
    records = [
        r
        for r in store.records()
        if r["model"] in args.models and r["site"] in args.sites
    ]
    write_csv(records, args.out / "dissection.csv")
    summary = summarize(records, args.plot_threshold)
    write_csv(summary, args.out / "summary.csv")
    figure = plot_figure3(records, args.out / "figure3.png", args.plot_threshold)
    return {
        "jsonl": str(store.path),
        "csv": str(args.out / "dissection.csv"),
        "summary_csv": str(args.out / "summary.csv"),
        "figure": str(figure),
        "summary": summary,
    }


if __name__ == "__main__":
    result = main(sys.argv[1:])
    for row in result["summary"]:
        print(json.dumps(row))
