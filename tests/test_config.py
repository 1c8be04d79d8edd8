"""The TrialConfig: dotted overrides, the fields checked, what a worker holds."""

import pytest

from structinit.config import make, with_overrides


def test_with_overrides_replaces_dotted_fields_and_validates():
    base = make("digits")
    cfg = with_overrides(base, {"model.embed_dim": 96, "init.filter_size": 3, "recipe.lr": 5e-4, "seed": 4})
    assert (cfg.model.embed_dim, cfg.init.filter_size, cfg.recipe.lr, cfg.seed) == (96, 3, 5e-4, 4)
    assert cfg.model.name == base.model.name
    with pytest.raises(ValueError, match=r"search field='model.width'"):
        with_overrides(base, {"model.width": 3})
    with pytest.raises(ValueError, match=r"target_mass=2"):
        with_overrides(base, {"init.target_mass": 2})



@pytest.mark.parametrize("fields,needle", [
    (dict(gpu=True, gpu_share=0.0), "gpu_share=0.0"),
    (dict(gpu=True, gpu_share=1.5), "gpu_share=1.5"),
    (dict(gpu=True, gpu_share=0.5, workers=2), "gpu_share=0.5 is not allowed: expected 1 with workers=2"),
    (dict(val_size=0), "val_size=0"),
    (dict(checkpoint_every=0), "checkpoint_every=0"),
])
def test_evaluation_checkpoint_and_gpu_share_fields_are_checked(fields, needle):
    with pytest.raises(ValueError, match="expected") as err:
        make("digits", **fields)
    assert needle in str(err.value)



def test_a_worker_holds_its_cpus_and_on_a_gpu_its_share():
    assert make("digits", cpus_per_worker=2).worker_resources() == {"CPU": 2}
    assert make("digits", gpu=True, gpu_share=0.25).worker_resources() == {"CPU": 1, "GPU": 0.25}

