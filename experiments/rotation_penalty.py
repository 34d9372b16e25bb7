"""The rotation penalty of a trained Myrtle CNN (Section 3.3, Figure 4).

For each activation asked for, a Myrtle CNN without BatchNorm (convolutions with
biases, as the authors used) is trained into a zoo, or loaded from it when it is
already there. Then, for every activation layer ``l`` and every kind of ``A``
(a random element of the layer's intertwiner group, a Haar-random orthogonal
matrix, and optionally the identity as a control), independent trials transform
layer ``l`` by ``A``, freeze layers ``<= l`` and fine-tune the rest; the penalty is
the base network's test accuracy minus the fine-tuned one's, at the epoch (and,
with several ``--learning-rate`` values, the rate) chosen on the validation split
(:mod:`symjax.rotation_penalty`). Written to ``--out``:

- ``results.jsonl``: one record per (activation, layer, kind, trial); rerunning
  skips the trials already there, so an interrupted run loses at most one batch
  of trials;
- ``rotation_penalty.csv``: per (activation, layer, kind), the mean penalty with
  a 95% Student-t confidence interval over trials, the penalty before any
  fine-tuning, and the rates chosen;
- ``figure4.png``: the penalty per layer for each kind, with those intervals;
- ``config.json``: the settings, checked when a run is resumed.

Usage::

    python -m experiments.rotation_penalty --out reports/rotation_penalty \\
        --width 16 --train-size 8000 --base-epochs 30 --base-lr 0.02 --trials 3 \\
        --finetune-epochs 6 --learning-rate 0.003 0.01
"""

from __future__ import annotations

import argparse
import collections
import csv
import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np
import scipy.stats

from experiments import common
from symjax import rotation_penalty as rp
from symjax.data import load_cifar10
from symjax.training import TrainConfig, load_zoo_member, member_dir, train_zoo

log = logging.getLogger(__name__)

KEY_FIELDS = ("activation", "layer", "kind", "trial")
LABELS = {
    "group": "A in the intertwiner group",
    "orthogonal": "A random orthogonal",
    "identity": "A = I (control)",
}
COLORS = {"group": "tab:blue", "orthogonal": "tab:red", "identity": "tab:gray"}
# Settings that change the numbers; a resumed run must agree on all of them.
_RESULT_SETTINGS = (
    "width",
    "train_size",
    "val_size",
    "test_size",
    "split_seed",
    "base_recipe",
    "base_epochs",
    "base_lr",
    "base_seed",
    "finetune_epochs",
    "finetune_batch_size",
    "optimizer",
    "learning_rate",
    "weight_decay",
    "schedule",
    "pad",
)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument(
        "--zoo",
        type=Path,
        default=None,
        help="zoo root for the base models (default: OUT/zoo); trained if missing",
    )
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument(
        "--activations", nargs="+", default=["relu"], choices=["relu", "sigmoid"]
    )
    p.add_argument("--width", type=int, default=16, help="Myrtle width c")
    p.add_argument("--train-size", type=int, default=None)
    p.add_argument("--val-size", type=int, default=5000)
    p.add_argument("--test-size", type=int, default=None)
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--base-recipe", default="cpu", choices=["cpu", "paper"])
    p.add_argument("--base-epochs", type=int, default=None)
    p.add_argument(
        "--base-lr",
        type=float,
        default=None,
        help="learning rate of the base networks (default: the recipe's; the cpu "
        "recipe's 0.1 is too high for a Myrtle CNN without BatchNorm)",
    )
    p.add_argument("--base-seed", type=int, default=0)
    p.add_argument("--layers", nargs="+", default=None, help="default: all")
    p.add_argument(
        "--kinds", nargs="+", default=["group", "orthogonal"], choices=rp.KINDS
    )
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--finetune-epochs", type=int, default=2)
    p.add_argument("--finetune-batch-size", type=int, default=128)
    p.add_argument("--optimizer", default="adam", choices=rp.OPTIMIZERS)
    p.add_argument(
        "--learning-rate",
        type=float,
        nargs="+",
        default=[1e-3],
        help="peak fine-tuning rate, or several: each trial is fine-tuned at every "
        "rate and the (rate, epoch) of best validation accuracy is chosen",
    )
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--schedule", default="cosine", choices=rp.SCHEDULES)
    p.add_argument("--pad", type=int, default=2, help="translation range, pixels")
    p.add_argument("--eval-batch-size", type=int, default=500)
    args = p.parse_args(argv)
    # One rate is stored as a float, as before grids existed, so that a run made
    # with one rate resumes.
    rates = args.learning_rate
    args.learning_rate = rates[0] if len(rates) == 1 else list(rates)
    return args


def finetune_config(args) -> rp.FinetuneConfig:
    return rp.FinetuneConfig(
        epochs=args.finetune_epochs,
        batch_size=args.finetune_batch_size,
        optimizer=args.optimizer,
        learning_rate=args.learning_rate,
        weight_decay=args.weight_decay,
        schedule=args.schedule,
        augment_pad=args.pad,
        eval_batch_size=args.eval_batch_size,
    )


def base_config(args, activation: str) -> TrainConfig:
    """The zoo configuration of the base network for ``activation``.

    Its zoo name carries the learning rate (when set) and the epochs, so that
    bases trained differently live side by side in one zoo.
    """
    model = {"width": args.width, "activation": activation, "batch_norm": False}
    name = TrainConfig(arch="myrtle", model=model).run_name
    if args.base_lr is not None:
        name += f"_lr{args.base_lr}"
    epochs = (
        TrainConfig(arch="myrtle", recipe=args.base_recipe, epochs=args.base_epochs)
        .resolved()
        .epochs
    )
    return TrainConfig(
        arch="myrtle",
        model=model,
        name=f"{name}_epochs{epochs}",
        learning_rate=args.base_lr,
        recipe=args.base_recipe,
        epochs=args.base_epochs,
        seeds=(args.base_seed,),
        train_size=args.train_size,
        val_size=args.val_size,
        test_size=args.test_size,
        split_seed=args.split_seed,
        eval_batch_size=args.eval_batch_size,
    ).resolved()


def check_settings(args) -> None:
    """Writes ``config.json``, or checks that a resumed run uses the same settings."""
    settings = {k: getattr(args, k) for k in _RESULT_SETTINGS}
    path = args.out / "config.json"
    if path.exists():
        stored = json.loads(path.read_text())
        changed = {
            k: (stored.get(k), v) for k, v in settings.items() if stored.get(k) != v
        }
        if changed:
            raise ValueError(
                f"{args.out} holds results of other settings {changed} "
                "(stored, asked); choose another --out."
            )
        return
    args.out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")


def load_base(args, activation: str, splits):
    """Trains (or finds) the base network in the zoo and loads it."""
    config = base_config(args, activation)
    zoo = args.zoo if args.zoo is not None else args.out / "zoo"
    started = time.perf_counter()
    train_zoo(config, splits, zoo, progress=False)
    model, variables, info = load_zoo_member(
        member_dir(zoo, config.run_name, args.base_seed)
    )
    log.info(
        "%s base network: test accuracy %.4f at epoch %d (%.0f s)",
        activation,
        info["test_accuracy"],
        info["best_epoch"],
        time.perf_counter() - started,
    )
    return model, variables, info


def run(args) -> list[dict]:
    """Runs every missing trial; returns all records of ``results.jsonl``."""
    check_settings(args)
    store = common.RecordStore(args.out / "results.jsonl", KEY_FIELDS)
    splits = load_cifar10(
        args.data_dir,
        train_size=args.train_size,
        val_size=args.val_size,
        test_size=args.test_size,
        seed=args.split_seed,
    )
    config = finetune_config(args)
    for activation in args.activations:
        model, variables, info = load_base(args, activation, splits)
        layers = args.layers or list(model.layers)
        for layer in layers:
            for kind in args.kinds:
                trials = [
                    t
                    for t in range(args.trials)
                    if not store.has(
                        {
                            "activation": activation,
                            "layer": layer,
                            "kind": kind,
                            "trial": t,
                        }
                    )
                ]
                if not trials:
                    continue
                results = rp.run_trials(
                    model, variables, splits, layer, kind, trials, config
                )
                for trial, result in zip(trials, results, strict=True):
                    store.add(
                        {
                            "activation": activation,
                            "trial": trial,
                            "width": args.width,
                            "base_member": info["path"],
                            **result,
                        }
                    )
                log.info(
                    "%s %s %s: penalties %s (%.0f s for %d trials)",
                    activation,
                    layer,
                    kind,
                    [round(r["penalty"], 4) for r in results],
                    results[0]["seconds"],
                    len(trials),
                )
    return store.records()


@dataclasses.dataclass(frozen=True)
class Summary:
    """The penalty of one (activation, layer, kind) over its trials (fractions).

    ``ci95`` is the half-width of a Student-t 95% interval (0 for one trial);
    ``penalty_no_finetune`` uses the transformed network before any step.
    """

    activation: str
    layer: str
    layer_index: int
    kind: str
    trials: int
    penalty: float
    ci95: float
    std: float
    acc_before: float
    acc_after: float
    penalty_no_finetune: float
    mean_best_epoch: float
    rates_chosen: str


def _rates_chosen(rows: list[dict]) -> str:
    """How often each fine-tuning rate was chosen, e.g. ``"0.003 x2, 0.01 x1"``
    (records written before rate grids existed name it in ``finetune``)."""
    counts = collections.Counter(
        r.get("learning_rate", r.get("finetune", {}).get("learning_rate")) for r in rows
    )
    return ", ".join(f"{rate:g} x{n}" for rate, n in sorted(counts.items()))


def summarize(records: list[dict]) -> list[Summary]:
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["activation"], r["layer_index"], r["kind"]), []).append(r)
    out = []
    for (activation, index, kind), rows in sorted(groups.items()):
        penalty = np.array([r["penalty"] for r in rows])
        n = len(rows)
        z = scipy.stats.t.ppf(0.975, n - 1) if n > 1 else 0.0
        mean, ci = common.mean_ci(penalty, z=z)
        out.append(
            Summary(
                activation=activation,
                layer=rows[0]["layer"],
                layer_index=index,
                kind=kind,
                trials=n,
                penalty=mean,
                ci95=ci,
                std=float(penalty.std(ddof=1)) if n > 1 else 0.0,
                acc_before=float(np.mean([r["acc_before"] for r in rows])),
                acc_after=float(np.mean([r["acc_after"] for r in rows])),
                penalty_no_finetune=float(
                    np.mean([r["acc_before"] - r["test_acc"][0] for r in rows])
                ),
                mean_best_epoch=float(np.mean([r["best_epoch"] for r in rows])),
                rates_chosen=_rates_chosen(rows),
            )
        )
    return out


def write_csv(summaries: list[Summary], path: Path) -> Path:
    with open(path, "w", newline="") as f:
        fields = [field.name for field in dataclasses.fields(Summary)]
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for s in summaries:
            row = dataclasses.asdict(s)
            for k, v in row.items():
                if isinstance(v, float):
                    row[k] = f"{v:.5f}"
            writer.writerow(row)
    return path


def plot(summaries: list[Summary], path: Path) -> Path:
    """Figure 4: the penalty (percentage points) per layer, one panel per
    activation, one series per kind, with 95% intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    activations = sorted({s.activation for s in summaries})
    fig, axes = plt.subplots(
        1, len(activations), figsize=(4.5 * len(activations), 3.6), squeeze=False
    )
    kinds = [k for k in rp.KINDS if any(s.kind == k for s in summaries)]
    for ax, activation in zip(axes[0], activations, strict=True):
        for j, kind in enumerate(kinds):
            rows = [
                s for s in summaries if s.activation == activation and s.kind == kind
            ]
            x = np.array([s.layer_index + 1 for s in rows]) + 0.08 * (
                j - (len(kinds) - 1) / 2
            )
            ax.errorbar(
                x,
                [100 * s.penalty for s in rows],
                yerr=[100 * s.ci95 for s in rows],
                fmt="o-",
                capsize=3,
                color=COLORS[kind],
                label=LABELS[kind],
            )
        ax.axhline(0.0, color="black", lw=0.6)
        layers = sorted(
            {s.layer_index for s in summaries if s.activation == activation}
        )
        ax.set_xticks([i + 1 for i in layers])
        ax.set_xlabel("layer l")
        ax.set_ylabel("rotation penalty (accuracy points)")
        ax.set_title(f"Myrtle CNN, {activation}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path


def main(argv=None) -> list[Summary]:
    args = parse_args(argv)
    common.start()
    started = time.perf_counter()
    records = run(args)
    summaries = summarize(records)
    write_csv(summaries, args.out / "rotation_penalty.csv")
    plot(summaries, args.out / "figure4.png")
    print(f"{'activation':<10} {'layer':<8} {'kind':<11} {'n':>2} penalty (pp) 95% CI")
    for s in summaries:
        print(
            f"{s.activation:<10} {s.layer:<8} {s.kind:<11} {s.trials:>2} "
            f"{100 * s.penalty:8.2f} +- {100 * s.ci95:.2f}"
        )
    print(f"wrote {args.out} in {time.perf_counter() - started:.0f} s")
    return summaries


if __name__ == "__main__":
    main()
