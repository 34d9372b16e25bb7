"""Train seeds of one architecture into a model zoo.

Example (four Myrtle CNNs of width 16, trained together, on CIFAR-10)::

    python -m experiments.train_zoo --arch myrtle --width 16 --seeds 0-3 \\
        --recipe cpu --epochs 10 --out zoo/

Each seed lands in ``<out>/<name>/seed_<k>/`` (see :mod:`symjax.training.zoo`);
rerunning the same command skips finished seeds and resumes interrupted ones from
their last epoch. The epoch with the best validation accuracy is kept; the test
accuracy is reported, never used for selection.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from experiments import common
from symjax.nn.conv import CONV_IMPLS
from symjax.training import RECIPES, TrainConfig


def parse_seeds(text: str) -> tuple[int, ...]:
    """``"0-3"`` -> ``(0, 1, 2, 3)``; ``"0,4,7-8"`` -> ``(0, 4, 7, 8)``."""
    seeds = []
    for part in text.split(","):
        lo, sep, hi = part.strip().partition("-")
        try:
            seeds += range(int(lo), int(hi) + 1) if sep else [int(lo)]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"--seeds takes ranges such as 0-3 or 0,4,7-8; got {text!r}."
            ) from None
    return tuple(seeds)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--arch", default="myrtle", help="symjax.models name")
    parser.add_argument("--width", type=int, default=None, help="model width")
    parser.add_argument(
        "--model-config",
        type=json.loads,
        default={},
        help='other model fields as JSON, e.g. \'{"activation": "leaky_relu"}\'',
    )
    parser.add_argument("--seeds", type=parse_seeds, default=(0,), help="e.g. 0-3")
    parser.add_argument("--recipe", choices=RECIPES, default="cpu")
    parser.add_argument("--epochs", type=int, default=None, help="recipe's if unset")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None, help="learning rate")
    parser.add_argument("--weight-decay", type=float, default=None)
    parser.add_argument("--pad", type=int, default=None, help="translation pixels")
    parser.add_argument("--train-size", type=int, default=None)
    parser.add_argument("--val-size", type=int, default=5000)
    parser.add_argument("--test-size", type=int, default=None)
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--eval-batch-size", type=int, default=500)
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--conv-impl", choices=CONV_IMPLS, default="auto")
    parser.add_argument("--group-size", type=int, default=None, help="seeds per vmap")
    parser.add_argument("--name", default=None, help="zoo subdirectory")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path("zoo"))
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument(
        "--distributed",
        action="store_true",
        help="call jax.distributed.initialize() (multi-host runs)",
    )
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` that the command line describes."""
    model = dict(args.model_config)
    if args.width is not None:
        model["width"] = args.width
    return TrainConfig(
        arch=args.arch,
        model=model,
        recipe=args.recipe,
        epochs=args.epochs,
        batch_size=args.batch_size,
        seeds=args.seeds,
        train_size=args.train_size,
        val_size=args.val_size,
        test_size=args.test_size,
        split_seed=args.split_seed,
        pad=args.pad,
        learning_rate=args.lr,
        weight_decay=args.weight_decay,
        eval_batch_size=args.eval_batch_size,
        log_every=args.log_every,
        conv_impl=args.conv_impl,
        name=args.name,
    ).resolved()


def main(argv: Sequence[str] | None = None) -> list[dict]:
    """Runs the command line ``argv``; returns the seeds' ``done.json`` records."""
    args = build_parser().parse_args(argv)
    common.start()

    import jax

    if args.distributed:
        jax.distributed.initialize()

    from symjax.data import load_cifar10
    from symjax.training import train_zoo

    config = config_from_args(args)
    splits = load_cifar10(
        args.data_dir,
        train_size=config.train_size,
        val_size=config.val_size,
        test_size=config.test_size,
        seed=config.split_seed,
    )
    print(
        f"{config.run_name}: seeds {list(config.seeds)}, {len(splits.train)} train / "
        f"{len(splits.val)} val / {len(splits.test)} test images, "
        f"{jax.device_count()} device(s)"
    )
    records = train_zoo(
        config,
        splits,
        args.out,
        group_size=args.group_size,
        progress=not args.no_progress,
    )
    for r in records:
        val = "n/a" if r["val_accuracy"] is None else f"{r['val_accuracy']:.4f}"
        print(
            f"seed {r['seed']}: epoch {r['best_epoch']} chosen ({r['selected_on']}), "
            f"val {val}, test {r['test_accuracy']:.4f}"
        )
    return records


if __name__ == "__main__":
    main()
