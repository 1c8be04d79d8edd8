"""Filter size: impulse init with f x f filters, f = 3, 5, 7, against mimetic and the footing's
baseline on the same runs. The cpu and paper presets stand on the `v1` footing (random offsets
drawn from all f^2 taps, as v1 did).

Digits use patch 1 here (an 8x8 grid), so filters up to 7 fit.

    python studies/filter_size.py [--preset smoke|cpu|paper] ...
    structinit report filter_size
"""
from structinit.commands.study import cli
from structinit.config import make
from structinit.declarations import IMPULSE_PAIRS
from structinit.footings import FOOTINGS
from structinit.study import Study, paper, smoke

V1 = ("impulse", "mimetic", FOOTINGS["v1"].baseline)


def study(sizes, trial, seeds, inits=("impulse", "mimetic")):
    return Study("filter_size", trial, grid={"init.filter_size": list(sizes)}, inits=inits, seeds=seeds,
                 pairs=IMPULSE_PAIRS, plots=("curves", "param_importances"))


PRESETS = {
    "smoke": lambda: study([3], smoke(patch_size=1), (0,)),
    "cpu": lambda: study([3, 5, 7], make("digits", recipe_overrides=dict(epochs=30), footing="v1",
                                         model_overrides=dict(patch_size=1)), (0, 1, 2), V1),
    "paper": lambda: study([3, 5, 7], paper("cifar100", footing="v1"), (0, 1, 2), V1),
}

if __name__ == "__main__":
    cli(PRESETS)
