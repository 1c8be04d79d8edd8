"""The per-worker training step outside Ray: the same code the Train workers run, including the
autocast branch GPUs take (exercised here with CPU bf16 autocast)."""
import copy

import pytest
import torch

from structinit.config import make
from structinit.train import (Context, amp_dtype, build, evaluate, loss_function, optimizer_and_schedule,
                              train_one_epoch)


@pytest.mark.slow
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


@pytest.mark.slow
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


class Reads(torch.utils.data.Dataset):
    """A split that records the index of every image read from it."""

    def __init__(self, base):
        self.base, self.reads = base, []

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        self.reads.append(i)
        return self.base[i]


@pytest.mark.parametrize("every_epoch", [False, True])
def test_the_test_set_is_read_only_where_it_is_evaluated(monkeypatch, every_epoch):
    """The real loop, in this process with a local Session, on digits whose test split records its
    reads: the epoch-0 measures (rank k, fidelity on real images) and every epoch's validation read
    no test image; the test set is read at the end, once, in the one pass that evaluates the final
    and the best-validation model (with `test_every_epoch`, one pass every epoch)."""
    from structinit import data, metrics, train

    pool, test = data.load_splits("digits", None)
    recorded = Reads(test)
    monkeypatch.setattr(data, "load_splits", lambda *args, **kwargs: (pool, recorded))
    cfg = make("digits", recipe_overrides=dict(epochs=3, warmup_epochs=0, batch_size=64), fraction=0.3,
               model_overrides=dict(embed_dim=32, depth=1), test_every_epoch=every_epoch)
    reports = []

    class Checkpoint:
        @staticmethod
        def from_directory(folder):
            return folder

    def report(metrics, checkpoint=None):
        reports.append((metrics, list(recorded.reads)))

    threads = torch.get_num_threads()
    try:
        train.train_loop({"trial": cfg, "tracking": None, "data": None},
                         train.Session(train.Context(), lambda: None, report, Checkpoint))
    finally:
        torch.set_num_threads(threads)  # the loop sets cpus_per_worker for its process
    one_pass = list(range(len(test)))  # the evaluation loader reads the test set in order, unshuffled
    assert [m["epoch"] for m, _ in reports] == [0, 1, 2]
    assert "init_rank_k" in reports[0][0] and "init_hit_data" in reports[0][0]  # the epoch-0 measures ran
    assert {k for k in reports[0][0] if k.startswith("init_")} <= set(metrics.INIT)  # the names results reads
    assert set(metrics.FINAL) <= set(reports[-1][0])
    if every_epoch:
        assert [reads for _, reads in reports] == [one_pass, one_pass * 2, one_pass * 3]
    else:
        assert [reads for _, reads in reports] == [[], [], one_pass]
        assert all("test_top1" not in m for m, _ in reports[:-1])
    last = reports[-1][0]
    assert {"final_test_top1", "test_top1_at_best_val"} <= last.keys()


@pytest.mark.slow
def test_a_mixup_run_replays_exactly_whatever_numpys_global_state():
    """timm's Mixup/CutMix draw from NumPy's global generator: the loop seeds it each epoch with
    torch's, so two runs of one config report the same losses, however NumPy was left before."""
    import numpy as np

    from structinit import train

    cfg = make("digits", recipe_overrides=dict(mixup=0.8, cutmix=1.0, epochs=2, warmup_epochs=0, batch_size=64),
               fraction=0.3, model_overrides=dict(embed_dim=32, depth=1))

    class Checkpoint:
        from_directory = staticmethod(lambda folder: folder)

    def losses(numpy_seed):
        np.random.seed(numpy_seed)
        reports = []
        threads = torch.get_num_threads()
        try:
            train.train_loop({"trial": cfg, "tracking": None, "data": None},
                             train.Session(train.Context(), lambda: None,
                                           lambda metrics, checkpoint=None: reports.append(metrics["train_loss"]),
                                           Checkpoint))
        finally:
            torch.set_num_threads(threads)
        return reports

    assert losses(1) == losses(2)

