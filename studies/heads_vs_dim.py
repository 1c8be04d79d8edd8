"""Heads vs embedding dim: does impulse init need h >= f^2 heads and a wide enough head (D/h >= k),
and which impulse setting -- sharpness, PE scale, pseudo input -- makes it pay?

Optuna proposes (embed_dim, heads) pairs, heads always dividing the dim, together with the impulse
init's own settings (study.impulse_settings): `init.target_mass` in [0.2, 0.999], the pseudo input,
`pe` or `data` (solved layer by layer on real training images), and on a learned PE its scale in
[1, 32] (log). Each proposal is trained with impulse, mimetic and the footing's baseline over the
same seeds -- and, on a learned PE, pe_scaled (the same PE scale and V/proj, Q/K unsolved) -- so the
report pairs them seed by seed and splits impulse - baseline into (pe_scaled - baseline), what the
PE scale (and on `followup` the mimetic V/proj) gives, and (impulse - pe_scaled), what the solved
Q/K give. The search optimises that question's answer, impulse - baseline on validation seed by
seed (`objective`), not the mean over every arm: mimetic and the baseline ignore the impulse
knobs. Under `--scheduler grouped` whole configurations stop at rungs from the end of the warm-up
on. A fixed sin-cos PE keeps its scale 1: it cannot shrink back in training (at x28 the digits
trained at chance), and pe_scaled would be the baseline bit for bit. The cpu presets train on 25 %
of digits, where the arms do not saturate; `cpu` stands on the `v1` footing (fixed sin-cos PE,
average pooling, PyTorch-default base), `cpu_followup` on the `followup` one (learned PE, class
token, mimetic V/proj); both with the closed form per block, whose sharpness is what is searched.

    python studies/heads_vs_dim.py [--preset smoke|cpu|cpu_followup|paper] [--resume] [--seeds 0,1,2,3,4] ...
    python studies/heads_vs_dim.py --preset cpu --scheduler grouped     (stops whole configurations early)
    ray submit cluster/gpu.yaml studies/heads_vs_dim.py -- --preset paper
    structinit report heads_vs_dim            (cpu_followup: heads_vs_dim_followup)
"""
from functools import partial

from structinit.commands.study import cli
from structinit.config import make
from structinit.footings import FOOTINGS
from structinit.study import PAPER, Study, heads_and_dims, impulse_settings, smoke

# the closed form per block, its sharpness set by target_mass (searched), on either footing
SEARCHED = dict(solver="closed_form", target_mass=0.9, factor_norm=None, qk="per_block", offsets="cover")


def study(footing: str, dataset: str, dims, heads, num_configs: int, seeds, **fields) -> Study:
    """The searched study on `footing`: impulse, mimetic, the footing's baseline and, on a learned
    PE, pe_scaled with the PE scale searched. It optimises impulse - baseline (validation, seed by
    seed); early stopping (asha, grouped) judges from the end of the recipe's warm-up on, where
    the learning rate stops ramping."""
    learned = FOOTINGS[footing].model["pos_embed"] == "learn"
    baseline = FOOTINGS[footing].baseline
    inits = ("impulse", *(("pe_scaled",) if learned else ()), "mimetic", baseline)
    trial = make(dataset, footing=footing, init_overrides=SEARCHED, **fields)
    name = "heads_vs_dim" if footing == "v1" else f"heads_vs_dim_{footing}"  # one report per footing
    space = partial(impulse_settings, dims=dims, heads=heads, pe_scales=(1.0, 32.0) if learned else None)
    return Study(name, trial, space, num_configs=num_configs, inits=inits, seeds=seeds,
                 objective=f"gap:impulse-{baseline}", grace_epochs=max(1, trial.recipe.warmup_epochs))


CPU = dict(fraction=0.25, recipe_overrides=dict(epochs=30))  # 25 % of digits, where the arms do not saturate
PRESETS = {
    # a few minutes on a 2-core CPU: one proposal, two epochs
    "smoke": lambda: Study("heads_vs_dim", smoke(), partial(heads_and_dims, dims=[32, 64], heads=[2, 4]),
                           num_configs=1, seeds=(0,)),
    # on a laptop: 6 proposals x 3-4 inits x 5 seeds (~15-20 min on 2 cores)
    "cpu": lambda: study("v1", "digits", [32, 64, 96], [2, 4, 8, 16], 6, (0, 1, 2, 3, 4), **CPU),
    "cpu_followup": lambda: study("followup", "digits", [32, 64, 96], [2, 4, 8, 16], 6, (0, 1, 2, 3, 4), **CPU),
    # the paper's CIFAR-100 table (ViT-T/S at 32 px, heads 3..16) on GPU workers
    "paper": lambda: study("v1", "cifar100", [192, 384], [3, 6, 8, 12, 16], 8, (0, 1, 2), **PAPER),
}

if __name__ == "__main__":
    cli(PRESETS)
