"""ConvMixer filters: are frozen random or impulse depthwise filters as good as learned ones once
D >= k f^2 (the paper's Proposition 1 and Corollary 2), and do box filters fail whatever D?

A grid over the kernel size f and the width D; each cell is trained with learned filters and with
frozen random, impulse (all f^2 taps covered; `--set init.offsets="random"` draws them) and box
filters, over several seeds. Every run logs the rank k of its patch embeddings at init, so the
report reads the frozen - learned gap against D / (k f^2) (table column "theory", filter_gap.png).
`--set init.distinct_filters=9` shares 9 filters across the channels.

    python studies/convmixer_filters.py [--preset smoke|cpu|paper] [--seeds 0,1,2] ...
    structinit report convmixer_filters
"""
from structinit.commands.study import cli
from structinit.config import make
from structinit.declarations import FILTER_PAIRS
from structinit.study import Study, paper, smoke

INITS = ("learned", "frozen_random", "frozen_impulse", "frozen_box")
CONVMIXER = "convmixer_64_4_p1"


def study(kernels, dims, trial, seeds):
    return Study("convmixer_filters", trial, grid={"model.kernel_size": list(kernels), "model.embed_dim": list(dims)},
                 inits=INITS, seeds=seeds, pairs=FILTER_PAIRS, plots=("curves", "filter_gap", "param_importances"))


PRESETS = {
    # a few minutes on a 2-core CPU: one cell, one seed, two epochs
    "smoke": lambda: study([3], [16], smoke(CONVMIXER), (0,)),
    # digits on a laptop (k = 4 at init): D / (k f^2) from 0.08 to 3.6
    "cpu": lambda: study([3, 5], [8, 32, 128], make("digits", CONVMIXER, recipe_overrides=dict(epochs=20)), (0, 1, 2)),
    # the paper's CIFAR-10 setting: ConvMixer-256/8 and -512/8, f = 3, 5, 7, patch 2
    "paper": lambda: study([3, 5, 7], [256, 512], paper("cifar10", model=CONVMIXER, model_overrides=dict(
        depth=8, patch_size=2)), (0, 1, 2)),
}

if __name__ == "__main__":
    cli(PRESETS)
