"""Heads vs embedding dim: does impulse init need h >= f^2 heads and a wide enough head (D/h >= k)?

Optuna proposes (embed_dim, heads) pairs, heads always dividing the dim; each pair is trained with
impulse, mimetic and the footing's baseline over several seeds, so the report pairs them seed by
seed. The cpu and paper presets stand on the `v1` footing (the paper this table comes from: fixed
sin-cos PE, average pooling, PyTorch-default base, v1's solver; baseline `torch_default`).

    python studies/heads_vs_dim.py [--preset smoke|cpu|paper] [--resume] [--seeds 0,1,2,3,4] ...
    ray submit cluster/gpu.yaml studies/heads_vs_dim.py -- --preset paper
    structinit report heads_vs_dim
"""
from functools import partial

from structinit.commands.study import cli
from structinit.config import make
from structinit.footings import FOOTINGS
from structinit.spaces import heads_and_dims
from structinit.study import Study

V1 = ("impulse", "mimetic", FOOTINGS["v1"].baseline)

PRESETS = {
    # a few minutes on a 2-core CPU: one proposal, two epochs
    "smoke": lambda: Study(
        "heads_vs_dim", make("digits", recipe_overrides=dict(epochs=2, warmup_epochs=0),
                             model_overrides=dict(depth=2)),
        partial(heads_and_dims, dims=[32, 64], heads=[2, 4]), num_configs=1, seeds=(0,)),
    # digits on a laptop: 4 proposals x 3 inits x 5 seeds
    "cpu": lambda: Study(
        "heads_vs_dim", make("digits", recipe_overrides=dict(epochs=30), footing="v1"),
        partial(heads_and_dims, dims=[32, 64, 96], heads=[1, 2, 4, 8]), num_configs=4, inits=V1,
        seeds=(0, 1, 2, 3, 4)),
    # the paper's CIFAR-100 table (ViT-T/S at 32 px, heads 3..16) on GPU workers
    "paper": lambda: Study(
        "heads_vs_dim", make("cifar100", data_root="/data", gpu=True, cpus_per_worker=4, footing="v1"),
        partial(heads_and_dims, dims=[192, 384], heads=[3, 6, 8, 12, 16]), num_configs=8, inits=V1,
        seeds=(0, 1, 2)),
}

if __name__ == "__main__":
    cli("heads_vs_dim", PRESETS)
