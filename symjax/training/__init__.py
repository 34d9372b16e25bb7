"""Training many seeds at once: recipes, the vmapped loop, checkpoints, the zoo."""

from symjax.training.checkpoint import RunDirectory
from symjax.training.config import TrainConfig
from symjax.training.parallel import pad_seeds, seed_mesh
from symjax.training.recipes import (
    RECIPES,
    Recipe,
    decay_mask,
    get_recipe,
    learning_rate_schedule,
    make_optimizer,
)
from symjax.training.train import (
    FitResult,
    TrainState,
    create_states,
    epoch_batches,
    evaluate,
    fit,
    make_eval_step,
    make_train_step,
    state_variables,
)
from symjax.training.zoo import list_zoo, load_zoo_member, member_dir, train_zoo

__all__ = [
    "RECIPES",
    "FitResult",
    "Recipe",
    "RunDirectory",
    "TrainConfig",
    "TrainState",
    "create_states",
    "decay_mask",
    "epoch_batches",
    "evaluate",
    "fit",
    "get_recipe",
    "learning_rate_schedule",
    "list_zoo",
    "load_zoo_member",
    "make_eval_step",
    "make_optimizer",
    "make_train_step",
    "member_dir",
    "pad_seeds",
    "seed_mesh",
    "state_variables",
    "train_zoo",
]
