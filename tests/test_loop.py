"""The per-worker training step outside Ray: the same code the Train workers run, including the
autocast branch GPUs take (exercised here with CPU bf16 autocast)."""
import copy

import pytest
import torch

from structinit.config import make
from structinit.train import (Context, amp_dtype, build, evaluate, loss_function, optimizer_and_schedule,
                              train_one_epoch)


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_one_epoch_trains_in_fp32_and_under_autocast(dtype):
    cfg = make("digits", recipe_overrides=dict(epochs=2, warmup_epochs=0, batch_size=64), fraction=0.5)
    torch.manual_seed(0)
    data, model, init, loaders, mixup = build(cfg, Context())
    before = [p.detach().clone() for p in model.parameters()]
    untrained = copy.deepcopy(model)
    opt, sched = optimizer_and_schedule(cfg, model, len(loaders["train"]))
    stats = train_one_epoch(model, loaders["train"], opt, sched, loss_function(cfg), device=torch.device("cpu"),
                            dtype=dtype, scaler=torch.amp.GradScaler("cpu", enabled=False), grad_clip=1.0,
                            mixup=mixup, epoch=0, updates=0)
    assert stats["images"] == len(data.train) and stats["updates"] == len(loaders["train"])
    assert torch.isfinite(torch.tensor(stats["train_loss"]))
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    on = dict(device=torch.device("cpu"), dtype=dtype, world=1)
    ev, ev_untrained = evaluate([model, untrained], loaders["test"], **on)  # one pass, each model its own sums
    assert 0 <= ev["top1"] <= ev["top5"] <= 100 and ev != ev_untrained
    assert [ev, ev_untrained] == evaluate([model], loaders["test"], **on) + evaluate([untrained], loaders["test"], **on)


def test_amp_only_on_cuda():
    cfg = make("digits")
    assert amp_dtype(cfg, torch.device("cpu")) is None


def test_mixup_recipe_uses_soft_targets():
    cfg = make("digits", recipe_overrides=dict(mixup=0.8, cutmix=1.0, batch_size=32, epochs=2, warmup_epochs=0))
    _, model, _, loaders, mixup = build(cfg, Context())
    assert mixup is not None and loaders["train"].drop_last
    x, y = next(iter(loaders["train"]))
    mixed, soft = mixup(x, y)
    assert soft.shape == (32, 10) and torch.allclose(soft.sum(-1), torch.ones(32))
    assert torch.isfinite(loss_function(cfg)(model(mixed), soft))


def test_a_data_aware_run_solves_on_a_seeded_batch_of_its_training_images():
    """pseudo_input='data': the run draws `data_images` training images (no augmentation) by its
    seed, the same ones on every worker and every retry, and solves on them."""
    import torch

    from structinit.config import make, with_overrides
    from structinit.data import Transformed
    from structinit.train import Context, build

    cfg = with_overrides(make("digits", fraction=0.5), {"init.pseudo_input": "data", "init.data_images": 40})
    first, again, other = (build(with_overrides(cfg, {"seed": s}), Context())[2] for s in (3, 3, 4))
    assert first.images.shape == (40, 1, 8, 8) and torch.equal(first.images, again.images)
    assert not torch.equal(first.images, other.images)
    d = build(with_overrides(cfg, {"seed": 3}), Context())[0]
    train = torch.stack([image for image, _ in Transformed(d.train.base, d.train.indices, d.test.transform)])
    assert all((train == image).flatten(1).all(1).any() for image in first.images)  # each a training image
