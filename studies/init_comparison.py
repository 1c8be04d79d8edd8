"""Init comparison (the paper's Table 1): datasets x inits, with the PE-scale control.

Every dataset is trained with impulse, `pe_scaled` (the same position-embedding scale as impulse,
unstructured attention), mimetic and the footing's baseline over several seeds; `impulse -
pe_scaled` is the part of the gain that structure, not the PE scale, explains. The cpu and paper
presets stand on the `followup` footing (learned PE x18, class token, PyTorch-default base,
closed form with the official factor norm 7, mimetic V/proj; baseline `torch_default`).

    python studies/init_comparison.py [--preset smoke|cpu|paper] [--seeds 0,1,2,3,4] ...
    structinit report init_comparison
"""
from functools import partial

from structinit.commands.study import cli
from structinit.config import make
from structinit.footings import FOOTINGS
from structinit.report import IMPULSE_PAIRS
from structinit.spaces import categorical
from structinit.study import Study

INITS = ("impulse", "pe_scaled", "mimetic", "default")
FOLLOWUP = ("impulse", "pe_scaled", "mimetic", FOOTINGS["followup"].baseline)


def study(datasets, trial, seeds, inits=INITS):
    grid = {"dataset": list(datasets)}
    return Study("init_comparison", trial, partial(categorical, **grid), grid=grid, inits=inits, seeds=seeds,
                 pairs=IMPULSE_PAIRS, plots=("curves", "param_importances"))


PRESETS = {
    "smoke": lambda: study(["digits"], make("digits", recipe_overrides=dict(epochs=2, warmup_epochs=0),
                                            model_overrides=dict(depth=2, pos_embed="learn")), (0,)),
    "cpu": lambda: study(["digits"], make("digits", recipe_overrides=dict(epochs=30), footing="followup"),
                         (0, 1, 2, 3, 4), FOLLOWUP),
    # CIFAR-10/100 and SVHN share one root in torchvision's layout; ViT-T/2 at 32 px
    "paper": lambda: study(["cifar10", "cifar100", "svhn"],
                           make("cifar10", data_root="/data", gpu=True, cpus_per_worker=4, footing="followup"),
                           (0, 1, 2, 3, 4), FOLLOWUP),
}

if __name__ == "__main__":
    cli("init_comparison", PRESETS)
