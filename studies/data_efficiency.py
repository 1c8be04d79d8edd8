"""Data efficiency: accuracy against the share of training data, per init (with the PE-scale control),
and the papers' flexibility question: does impulse's attention leave its initial taps more when it
trains on more data? Every run records its attention through training (attention.py); the report
draws the mean attention distance per fraction (`attention`) and pairs each fraction's final
distance with the smallest's, seed by seed (stats.across_fractions).

    python studies/data_efficiency.py [--preset smoke|cpu|paper] ...
    structinit report data_efficiency
"""
from structinit.commands.study import cli
from structinit.config import make
from structinit.declarations import IMPULSE_PAIRS
from structinit.study import Study, paper, smoke

LEARNED_PE = dict(pos_embed="learn")


def study(fractions, trial, seeds):
    return Study("data_efficiency", trial, grid={"fraction": list(fractions)},
                 inits=("impulse", "pe_scaled", "mimetic", "default"), seeds=seeds, pairs=IMPULSE_PAIRS,
                 plots=("curves", "attention", "param_importances"))


PRESETS = {
    "smoke": lambda: study([0.25], smoke(**LEARNED_PE), (0,)),
    "cpu": lambda: study([0.1, 0.25, 0.5, 1.0], make("digits", recipe_overrides=dict(epochs=30),
                                                     model_overrides=LEARNED_PE), (0, 1, 2)),
    "paper": lambda: study([0.01, 0.05, 0.1, 0.25, 0.5, 1.0], paper("cifar10", model_overrides=LEARNED_PE), (0, 1, 2)),
}

if __name__ == "__main__":
    cli(PRESETS)
