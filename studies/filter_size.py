"""Filter size: impulse init with f x f filters, f = 3, 5, 7, against mimetic on the same runs.

Digits use patch 1 here (an 8x8 grid), so filters up to 7 fit.

    python studies/filter_size.py [--preset smoke|cpu|paper] ...
    structinit report filter_size
"""
from functools import partial

from structinit.commands.study import cli
from structinit.config import make
from structinit.report import IMPULSE_PAIRS
from structinit.spaces import categorical
from structinit.study import Study


def study(sizes, trial, seeds):
    grid = {"init.filter_size": list(sizes)}
    return Study("filter_size", trial, partial(categorical, **grid), grid=grid, inits=("impulse", "mimetic"),
                 seeds=seeds, pairs=IMPULSE_PAIRS, plots=("curves", "param_importances"))


PRESETS = {
    "smoke": lambda: study([3], make("digits", recipe_overrides=dict(epochs=2, warmup_epochs=0),
                                     model_overrides=dict(depth=2, patch_size=1)), (0,)),
    "cpu": lambda: study([3, 5, 7], make("digits", recipe_overrides=dict(epochs=30),
                                         model_overrides=dict(patch_size=1)), (0, 1, 2)),
    "paper": lambda: study([3, 5, 7], make("cifar100", data_root="/data", gpu=True, cpus_per_worker=4), (0, 1, 2)),
}

if __name__ == "__main__":
    cli("filter_size", PRESETS)
