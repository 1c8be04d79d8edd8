"""Target shape: are one-tap impulse maps oversimplified? (the paper's open question)

Each head's target is its impulse, a blob around its tap (box or Gaussian, `init.blob` wide), and
each of these alone or blended with noise or with a mimetic map (`init.mix_ratio`, 0.3 here)
before the solve; the attention mass is always calibrated on the structured target's keys.
Each shape and mix is paired with the plain impulse (no mix), seed by seed.

    python studies/target_shape.py [--preset smoke|cpu|paper] [--set init.mix_ratio=0.5] ...
    structinit report target_shape
"""
import dataclasses

from structinit.commands.study import cli
from structinit.config import make
from structinit.declarations import IMPULSE_PAIRS
from structinit.study import Study, paper, smoke


def study(shapes, mixes, trial, seeds, mix_ratio=0.3):
    trial = dataclasses.replace(trial, init=dataclasses.replace(trial.init, mix_ratio=mix_ratio))
    return Study("target_shape", trial, grid={"init.target_shape": list(shapes), "init.mix": list(mixes)},
                 inits=("impulse",), seeds=seeds, pairs=IMPULSE_PAIRS, plots=("curves", "param_importances"),
                 reference={"init.target_shape": "impulse", "init.mix": None})


SHAPES, MIXES = ["impulse", "box", "gaussian"], [None, "noise", "mimetic"]
PRESETS = {
    "smoke": lambda: study(["impulse", "gaussian"], [None, "mimetic"], smoke(), (0,)),
    "cpu": lambda: study(SHAPES, MIXES, make("digits", recipe_overrides=dict(epochs=30)), (0, 1, 2)),
    "paper": lambda: study(SHAPES, MIXES, paper("cifar10"), (0, 1, 2)),
}

if __name__ == "__main__":
    cli(PRESETS)
