"""Model stitching across a zoo (paper Section 4, Figure 1).

For pairs of trained models of one architecture, stitches the front of one to the
back of the other at every activation layer with every stitching class, and
writes into ``--out``:

- ``results.jsonl``: one record per (architecture, pair, layer, class): validation
  accuracy per epoch, the chosen epoch, test accuracies of both models and of the
  stitched network, the stitching penalty (eq. 4.3), G_ReLU relaxation
  diagnostics; a rerun skips the records already there;
- ``penalties.csv``: the penalty per (architecture, layer, class), mean and 95%
  Student-t half-width over pairs, in percentage points;
- ``figure1.png``: those penalties per layer and class (the paper's Figure 1),
  one panel per architecture;
- ``run.json``: the command-line arguments of the latest run.

The jobs of one (architecture, layer, class) share shapes, so all their pairs are
trained together (vmapped, and split over the local devices). Epochs are chosen
on a validation split carved from the training split; the test split is only
reported. The data splits follow the zoo's own training configuration unless
overridden. Usage::

    python -m experiments.stitch --zoo zoo/myrtle_width16 --out reports/stitch \\
        --max-pairs 3 --methods full g_relu low_rank:1 identity
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import logging
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from experiments import common
from symjax.data import load_cifar10
from symjax.stitching import (
    METHODS,
    StitchConfig,
    confidence_interval,
    model_accuracy,
    stitch_pairs,
)

log = logging.getLogger(__name__)

KEY_FIELDS = ("group", "pair", "layer", "method")
DEFAULT_METHODS = ("full", "g_relu", "low_rank:1", "sparse", "orthogonal", "identity")


def parse_method(text: str) -> dict:
    """``"low_rank:4"`` -> ``{"method": "low_rank", "rank": 4}``; other names as
    they are."""
    name, _, rank = text.partition(":")
    if name not in METHODS:
        raise argparse.ArgumentTypeError(
            f"unknown stitching method {name!r}; choose one of {METHODS} "
            "(low_rank:R for rank R)."
        )
    if rank and name != "low_rank":
        raise argparse.ArgumentTypeError(f"only low_rank takes a rank, got {text!r}.")
    return {"method": name, "rank": int(rank)} if rank else {"method": name}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--zoo",
        type=Path,
        nargs="+",
        required=True,
        help="zoo roots or architecture directories (see symjax.training.zoo)",
    )
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS))
    p.add_argument("--layers", nargs="*", default=None, help="default: all")
    p.add_argument("--max-pairs", type=int, default=3)
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--train-size", type=int, default=None, help="default: the zoo's")
    p.add_argument("--val-size", type=int, default=None, help="default: the zoo's")
    p.add_argument("--test-size", type=int, default=None, help="default: the zoo's")
    p.add_argument("--split-seed", type=int, default=None, help="default: the zoo's")
    defaults = StitchConfig()
    p.add_argument("--epochs", type=int, default=defaults.epochs)
    p.add_argument("--finetune-epochs", type=int, default=defaults.finetune_epochs)
    p.add_argument("--optimizer", default=defaults.optimizer)
    p.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--init", default=defaults.init)
    p.add_argument("--epsilon-start", type=float, default=defaults.epsilon_start)
    p.add_argument("--epsilon-end", type=float, default=defaults.epsilon_end)
    p.add_argument("--l1", type=float, default=defaults.l1)
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-figure", action="store_true")
    args = p.parse_args(argv)
    try:
        args.method_specs = [parse_method(m) for m in args.methods]
    except argparse.ArgumentTypeError as err:
        p.error(str(err))
    if args.max_pairs < 1:
        p.error("--max-pairs must be positive.")
    return args


def stitch_config(args, spec: dict) -> StitchConfig:
    """The :class:`StitchConfig` of one class from the command line."""
    return StitchConfig(
        epochs=args.epochs,
        finetune_epochs=args.finetune_epochs,
        optimizer=args.optimizer,
        learning_rate=args.learning_rate,
        batch_size=args.batch_size,
        init=args.init,
        epsilon_start=args.epsilon_start,
        epsilon_end=args.epsilon_end,
        l1=args.l1,
        augment=not args.no_augment,
        seed=args.seed,
        **spec,
    )


def zoo_groups(roots) -> dict[str, list[Path]]:
    """Finished members grouped by architecture directory (zoo run name)."""
    from symjax.training.zoo import list_zoo

    groups: dict[str, list[Path]] = defaultdict(list)
    for root in roots:
        for member in list_zoo(root):
            if member not in groups[member.parent.name]:
                groups[member.parent.name].append(member)
    if not groups:
        raise SystemExit(f"no finished zoo members under {[str(r) for r in roots]}.")
    return dict(groups)


def splits_for(args, info: dict):
    """CIFAR-10 splits carved as the zoo's training configuration did."""
    trained = info["config"]

    def pick(name):
        value = getattr(args, name)
        return trained.get(name) if value is None else value

    kwargs = {
        "train_size": pick("train_size"),
        "val_size": pick("val_size"),
        "test_size": pick("test_size"),
        "seed": pick("split_seed") or 0,
    }
    if kwargs["val_size"] in (None, 0):
        raise SystemExit(
            "stitching selects epochs on a validation split, but the zoo was trained "
            "without one; pass --val-size."
        )
    return load_cifar10(args.data_dir, **kwargs), kwargs


def run_group(args, store, group: str, members: list[Path], splits) -> int:
    """Stitches the pairs of one architecture; returns the number of new records."""
    loaded = [common.load_member(m) for m in members]
    model = loaded[0][0]
    seeds = [info["config"]["seed"] for _, _, info in loaded]
    pairs = common.seed_pairs(list(range(len(loaded))), args.max_pairs)
    layers = model.layers if not args.layers else tuple(args.layers)
    unknown = sorted(set(layers) - set(model.layers))
    if unknown:
        raise SystemExit(f"{group}: unknown layers {unknown}; it has {model.layers}.")
    accuracies = None
    added = 0
    for layer, spec in itertools.product(layers, args.method_specs):
        config = stitch_config(args, spec)
        todo = [
            (i, j)
            for i, j in pairs
            if not store.has(
                {
                    "group": group,
                    "pair": [seeds[i], seeds[j]],
                    "layer": layer,
                    "method": config.label,
                }
            )
        ]
        if not todo:
            continue
        if accuracies is None:
            accuracies = model_accuracy(
                model, [v for _, v, _ in loaded], splits.test, conv_impl="auto"
            )
            log.info("%s: test accuracies %s", group, np.round(accuracies, 4))
        started = time.perf_counter()
        results = stitch_pairs(
            model,
            [loaded[i][1] for i, _ in todo],
            model,
            [loaded[j][1] for _, j in todo],
            layer,
            splits,
            config,
            accuracies=(
                [accuracies[i] for i, _ in todo],
                [accuracies[j] for _, j in todo],
            ),
        )
        for (i, j), result in zip(todo, results, strict=True):
            record = result.to_record()
            record.update(
                group=group,
                pair=[seeds[i], seeds[j]],
                layer_index=model.layers.index(layer),
                model=loaded[i][2]["config"].get("model", {}),
                arch=loaded[i][2]["config"].get("arch"),
            )
            store.add(record)
            added += 1
        print(
            f"{group} {layer:>16} {config.label:>12}: penalty "
            + " ".join(f"{100 * r.penalty:6.2f}" for r in results)
            + f" pp ({time.perf_counter() - started:.0f} s)",
            flush=True,
        )
    return added


def summarize(records: list[dict]) -> list[dict]:
    """Penalty rows per (group, layer, method), in percentage points."""
    cells: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        cells[(r["group"], r["layer_index"], r["layer"], r["method"])].append(r)
    rows = []
    for (group, index, layer, method), rs in sorted(cells.items()):
        mean, half = confidence_interval([100 * r["penalty"] for r in rs])
        rows.append(
            {
                "group": group,
                "layer_index": index,
                "layer": layer,
                "method": method,
                "pairs": len(rs),
                "penalty_pp": round(mean, 3),
                "penalty_pp_ci95": round(half, 3) if np.isfinite(half) else "",
                "stitched_accuracy": round(
                    float(np.mean([r["test_accuracy"] for r in rs])), 4
                ),
                "model_accuracy": round(
                    float(
                        np.mean([(r["accuracy_a"] + r["accuracy_b"]) / 2 for r in rs])
                    ),
                    4,
                ),
            }
        )
    return rows


def write_csv(rows: list[dict], path: Path) -> None:
    fields = list(rows[0]) if rows else ["group", "layer", "method", "penalty_pp"]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


METHOD_LABELS = {
    "identity": "identity (no layer)",
    "full": "full affine",
    "g_relu": "G_ReLU (P D)",
    "orthogonal": "orthogonal",
    "sparse": "sparse (L1)",
}


def _method_label(method: str) -> str:
    if method.startswith("low_rank:"):
        return f"rank {method.split(':')[1]}"
    return METHOD_LABELS.get(method, method)


def plot(rows: list[dict], path: Path) -> None:
    """Penalty per layer and class with confidence intervals (Figure 1)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({r["group"] for r in rows})
    fig, axes = plt.subplots(
        1, len(groups), figsize=(5 * len(groups) + 1.8, 3.6), squeeze=False
    )
    for ax, group in zip(axes[0], groups, strict=True):
        mine = [r for r in rows if r["group"] == group]
        layers = sorted({(r["layer_index"], r["layer"]) for r in mine})
        for method in sorted({r["method"] for r in mine}):
            pts = sorted(
                (r["layer_index"], r["penalty_pp"], r["penalty_pp_ci95"] or 0.0)
                for r in mine
                if r["method"] == method
            )
            x, y, e = (np.asarray(v, float) for v in zip(*pts, strict=True))
            ax.errorbar(
                x, y, yerr=e, marker="o", capsize=3, label=_method_label(method)
            )
        ax.set_xticks([i for i, _ in layers], [name for _, name in layers])
        ax.tick_params(axis="x", labelrotation=45)
        ax.axhline(0.0, color="grey", linewidth=0.8)
        ax.set_title(group)
        ax.set_xlabel("stitching layer")
        ax.set_ylabel("stitching penalty (pp)")
    axes[0][-1].legend(fontsize="small", loc="upper left", bbox_to_anchor=(1, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    common.start()
    args.out.mkdir(parents=True, exist_ok=True)
    run = {
        k: (str(v) if isinstance(v, Path) else v)
        for k, v in vars(args).items()
        if k != "method_specs"
    }
    run["zoo"] = [str(z) for z in args.zoo]
    (args.out / "run.json").write_text(json.dumps(run, indent=1))

    store = common.RecordStore(args.out / "results.jsonl", KEY_FIELDS)
    for group, members in zoo_groups(args.zoo).items():
        if len(members) < 2:
            log.warning("%s has %d finished member(s); skipped", group, len(members))
            continue
        info = common.load_member(members[0])[2]
        splits, carving = splits_for(args, info)
        log.info("%s: %d members, splits %s", group, len(members), carving)
        run_group(args, store, group, members, splits)

    rows = summarize(store.records())
    write_csv(rows, args.out / "penalties.csv")
    if rows and not args.no_figure:
        plot(rows, args.out / "figure1.png")
    for r in rows:
        print(
            f"{r['group']:>24} {r['layer']:>16} {r['method']:>12} "
            f"{r['penalty_pp']:7.2f} +- {r['penalty_pp_ci95'] or float('nan'):5.2f} pp "
            f"({r['pairs']} pairs)"
        )
    return rows


if __name__ == "__main__":
    main()
