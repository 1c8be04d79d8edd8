"""Pseudo input: which input the impulse Q/K are solved on (PE, uniform, Gaussian, PE + noise).
Each input is paired with `pe`, the papers' choice, seed by seed.

    python studies/pseudo_input.py [--preset smoke|cpu|paper] ...
    structinit report pseudo_input
"""
from structinit.commands.study import cli
from structinit.config import make
from structinit.declarations import IMPULSE_PAIRS
from structinit.study import Study, paper, smoke


def study(inputs, trial, seeds):
    return Study("pseudo_input", trial, grid={"init.pseudo_input": list(inputs)}, inits=("impulse",), seeds=seeds,
                 pairs=IMPULSE_PAIRS, plots=("curves", "param_importances"), reference={"init.pseudo_input": "pe"})


ALL = ["pe", "uniform", "gaussian", "pe+uniform", "pe+gaussian"]
PRESETS = {
    "smoke": lambda: study(["pe", "gaussian"], smoke(), (0,)),
    "cpu": lambda: study(ALL, make("digits", recipe_overrides=dict(epochs=30)), (0, 1, 2)),
    "paper": lambda: study(ALL, paper("cifar10"), (0, 1, 2)),
}

if __name__ == "__main__":
    cli(PRESETS)
