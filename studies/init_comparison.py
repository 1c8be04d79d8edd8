"""Init comparison (the paper's Table 1): datasets x inits, with the PE-scale control.

Every dataset is trained with impulse, `pe_scaled` (the same position-embedding scale as impulse,
default attention), mimetic and default init over several seeds; `impulse - pe_scaled` is the
part of the gain that structure, not the PE scale, explains. Models use a learned PE (the
follow-up's footing, where impulse scales it by 18).

    python studies/init_comparison.py [--preset smoke|cpu|paper] [--seeds 0,1,2,3,4] ...
    structinit report init_comparison
"""
from functools import partial

from structinit.commands.study import cli
from structinit.config import make
from structinit.report import IMPULSE_PAIRS
from structinit.spaces import categorical
from structinit.study import Study

INITS = ("impulse", "pe_scaled", "mimetic", "default")


def study(datasets, trial, seeds):
    grid = {"dataset": list(datasets)}
    return Study("init_comparison", trial, partial(categorical, **grid), grid=grid, inits=INITS, seeds=seeds,
                 pairs=IMPULSE_PAIRS, plots=("curves", "param_importances"))


PRESETS = {
    "smoke": lambda: study(["digits"], make("digits", recipe_overrides=dict(epochs=2, warmup_epochs=0),
                                            model_overrides=dict(depth=2, pos_embed="learn")), (0,)),
    "cpu": lambda: study(["digits"], make("digits", recipe_overrides=dict(epochs=30),
                                          model_overrides=dict(pos_embed="learn")), (0, 1, 2, 3, 4)),
    # CIFAR-10/100 and SVHN share one root in torchvision's layout; ViT-T/2 at 32 px
    "paper": lambda: study(["cifar10", "cifar100", "svhn"],
                           make("cifar10", data_root="/data", gpu=True, cpus_per_worker=4,
                                model_overrides=dict(pos_embed="learn")), (0, 1, 2, 3, 4)),
}

if __name__ == "__main__":
    cli("init_comparison", PRESETS)
