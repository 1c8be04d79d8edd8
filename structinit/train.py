"""One training run: `train_loop`, run by Ray Train's workers or by a Ray Tune trial itself.

    fit(cfg)           ->  TorchTrainer(train_loop_per_worker, {"trial": cfg, ...}).fit()   any workers (DDP)
    train_in_trial(cfg) ->  train_loop(..., tune_session())   one worker, inside the calling Tune trial:
                           no Train controller, worker group or placement group to start and tear down
    train_loop:        data -> model + init (fidelity at epoch 0) -> (DDP) -> epochs of train + eval,
                       reported to Ray with a cadenced checkpoint, resumed from the latest one on restart:
                       prepare -> announce -> equip -> restore -> per epoch: run_epoch, save.

The loop reaches Ray only through its `Session` (report, latest checkpoint, where it runs); `runner.py`
picks one per trial.
"""
from __future__ import annotations

import copy
import json
import math
import os
import random
import socket
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from torch.utils.data import DataLoader, DistributedSampler, Subset

from structinit import attention, checkpoint, cluster, fidelity, rank, tracking
from structinit import data as datasets
from structinit.config import ModelConfig, TrialConfig, check_model, data_kwargs, identity, weights_digest
from structinit.inits import InitConfig, apply_init, needs_images
from structinit.inits.default import pe_scale
from structinit.metrics import FINAL
from structinit.models import create


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or inf: the run stops rather than train on garbage."""


@dataclass
class Context:
    """Where a worker runs: rank, world size and device (a plain loop uses the defaults)."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")


@dataclass
class Session:
    """What the loop asks of the Ray library that runs it: where it runs, the latest checkpoint
    (None on a first start), and `report(metrics, checkpoint=None)`; `Checkpoint` is that library's
    class (ray.train's or ray.tune's)."""

    ctx: Context
    get_checkpoint: Callable
    report: Callable
    Checkpoint: type


def amp_dtype(cfg: TrialConfig, device: torch.device) -> torch.dtype | None:
    """bf16 autocast on a GPU that has it, fp16 (with a grad scaler) on one that does not; CPU runs fp32."""
    if not (cfg.recipe.amp and device.type == "cuda"):
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def loss_function(cfg: TrialConfig):
    r = cfg.recipe
    if r.mixup or r.cutmix:
        return SoftTargetCrossEntropy()
    return LabelSmoothingCrossEntropy(r.label_smoothing) if r.label_smoothing else torch.nn.CrossEntropyLoss()


def train_one_epoch(model, loader, optimizer, scheduler, loss_fn, *, device, dtype, scaler, grad_clip, mixup,
                    epoch: int, updates: int) -> dict:
    """One pass over `loader`; the lr follows `scheduler` per update. Raises NonFiniteLossError."""
    model.train()
    total, images, start = 0.0, 0, time.perf_counter()
    for step, (x, y) in enumerate(loader):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if mixup is not None:
            x, y = mixup(x, y)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = loss_fn(model(x), y)
        value = loss.item()
        if not math.isfinite(value):
            raise NonFiniteLossError(
                f"non-finite training loss ({value}) at epoch {epoch}, step {step}: stopping instead of training "
                f"on garbage (lower the lr, set a grad_clip, or check the data)")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if grad_clip:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        scaler.step(optimizer)
        scaler.update()
        updates += 1
        scheduler.step_update(updates)
        total += value * x.shape[0]
        images += x.shape[0]
    seconds = time.perf_counter() - start
    return {"train_loss": total / max(images, 1), "images": images, "train_seconds": seconds, "updates": updates}


@torch.no_grad()
def evaluate(models: list, loader, *, device, dtype, world: int) -> list[dict]:
    """Top-1/top-5 and loss of each model over this rank's shard, in one pass over the loader
    (each batch read and transformed once), summed over ranks when distributed."""
    for model in models:
        model.eval()
    sums = torch.zeros(len(models), 4, device=device, dtype=torch.float64)  # loss, top1, top5, count
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        for i, model in enumerate(models):
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                logits = model(x)
            top = logits.float().topk(min(5, logits.shape[-1]), dim=-1).indices
            hit = top == y[:, None]
            sums[i] += torch.stack([F.cross_entropy(logits.float(), y, reduction="sum"), hit[:, 0].sum(),
                                    hit.any(-1).sum(), torch.tensor(y.numel(), device=device)]).to(sums)
    if world > 1:
        torch.distributed.all_reduce(sums)
    return [{"loss": loss / max(n, 1), "top1": 100 * top1 / max(n, 1), "top5": 100 * top5 / max(n, 1)}
            for loss, top1, top5, n in sums.tolist()]


def shard(ds, ctx: Context):
    """This rank's share of an evaluation set: every world-th sample, no padding (exact metrics)."""
    return Subset(ds, range(ctx.rank, len(ds), ctx.world)) if ctx.world > 1 else ds


def initialised(cfg: TrialConfig, splits=None):
    """A run's data (from `splits`, the dataset a study read once, else its files) and its model,
    initialised: (data, model, InitResult)."""
    d = datasets.build(cfg.dataset, cfg.data_root, img_size=cfg.model.img_size, fraction=cfg.fraction,
                       val_fraction=cfg.val_fraction, seed=cfg.seed, recipe=cfg.recipe, download=False,
                       verify=cfg.verify, val_size=cfg.val_size, splits=splits)
    images = datasets.init_images(d, cfg.init.data_images, cfg.seed) if needs_images(cfg.init) else None
    return (d, *build_model(cfg.model, cfg.init, cfg.seed, images=images, **data_kwargs(cfg, d.num_classes)))


def build_model(model: ModelConfig, init: InitConfig | None = None, seed: int = 0, images=None, **fixed):
    """A model and its init from a config, the one way every caller builds them: checked first
    (config.check_model: its geometry, the init fits it, its memory), then `model`'s timm name and
    geometry over what the data fix (`fixed`: `data_kwargs`; none for a bare model; models.create),
    then `init` applied at `seed` (inits.apply_init: the registered strategy, e.g.
    inits/impulse.py; None: left as built, for a checkpoint's weights or a check), on `images`
    where it is data-aware (`data.init_images`). Returns (model, InitResult or None)."""
    check_model(model, init, **fixed)
    net = create(model.name, **{**fixed, **model.kwargs()})
    return net, None if init is None else apply_init(net, init, seed=seed, images=images)


def trial_identity(cfg: TrialConfig, splits=None) -> tuple[str, tuple]:
    """The identity of the trial `cfg` describes (config.identity), and what `initialised` built
    to know it, which the trial's training can start from instead of building it again."""
    built = initialised(cfg, splits)
    return identity(cfg, weights_digest(built[1])), built


def build(cfg: TrialConfig, ctx: Context, splits=None, built=None):
    """Data, model (initialised: `initialised`, unless `built` already holds what it gives), its
    InitResult, loaders and mixup for one worker."""
    d, model, init = built or initialised(cfg, splits)
    r = cfg.recipe
    per_worker = r.batch_size // ctx.world
    sampler = DistributedSampler(d.train, num_replicas=ctx.world, rank=ctx.rank, shuffle=True, seed=cfg.seed)
    # loader processes started once per run, not once per epoch and loader
    workers = dict(num_workers=r.loader_workers, persistent_workers=r.loader_workers > 0)
    mixup = None
    if r.mixup or r.cutmix:
        mixup = Mixup(mixup_alpha=r.mixup, cutmix_alpha=r.cutmix, label_smoothing=r.label_smoothing,
                      num_classes=d.num_classes)
    loaders = {
        "train": DataLoader(d.train, batch_size=per_worker, sampler=sampler, drop_last=mixup is not None,
                            pin_memory=ctx.device.type == "cuda", **workers),
        "val": DataLoader(shard(d.val, ctx), batch_size=cfg.eval_batch_size, **workers),
        "test": DataLoader(shard(d.test, ctx), batch_size=cfg.eval_batch_size, **workers),
    }
    return d, model, init, loaders, mixup


def optimizer_and_schedule(cfg: TrialConfig, model, steps_per_epoch: int):
    """AdamW (timm: no weight decay on biases, norms, PE) and cosine-with-warmup per update."""
    r = cfg.recipe
    optimizer = create_optimizer_v2(model, opt="adamw", lr=r.lr, weight_decay=r.weight_decay, eps=r.opt_eps)
    scheduler = CosineLRScheduler(optimizer, t_initial=r.epochs * steps_per_epoch, lr_min=r.min_lr,
                                  warmup_t=r.warmup_epochs * steps_per_epoch, warmup_lr_init=r.warmup_lr,
                                  t_in_epochs=False)
    return optimizer, scheduler


def initial_measures(model, cfg: TrialConfig, init, x: torch.Tensor) -> tuple[dict, dict]:
    """Epoch-0 metrics on held-out real images (`data.held_out`): the embedding rank k and the width
    the theory asks for (rank.py), and, where the init has impulse targets, the attention's forward-pass
    fidelity on the pseudo input and on the images, with the hit of a blind map (`chance`), the
    mean per-head ||W_q||_F, ||W_k||_F and the closed form's largest amplification (`gain`).
    Also the full per-block and per-head measures, for the run's artifacts."""
    k = rank.measure(model, x[:64], cfg.init.filter_size)
    out = {"init_rank_k": k["k"], "init_stable_rank": k["stable_rank"], "init_width_ratio": k["D"] / k["width_needed"]}
    if not init.pseudo_inputs:
        return out, {}
    measured = {**fidelity.measure(model, init, x[:64]), "notes": init.notes}
    for where in ("pseudo", "data"):
        s = fidelity.summary(measured[where])
        out[f"init_mass_{where}"] = s["target_mass"]["mean"]
        out[f"init_hit_{where}"] = s["argmax_hit"]["mean"]
    out["init_hit_chance"] = measured["chance"]
    out["init_pe_scale"] = pe_scale(model, cfg.init)  # 1 (and value_proj default): pe_scaled is its base
    for key in ("wq_norm", "wk_norm"):
        norms = [n for b in measured["weights"] for n in b[key]]
        out[f"init_{key}"] = sum(norms) / len(norms)
    gains = [b["gain"] for b in init.notes.get("blocks", []) if b.get("gain") is not None]
    if gains:
        out["init_gain"] = max(gains)
    solved = [m for b in init.notes.get("blocks", []) for m in b.get("mass") or []]
    if solved:  # what each block's solve reached on its own input: whether an asked mass was in reach
        out["init_mass_solved"] = sum(solved) / len(solved)
    return out, measured


def log_init(run: tracking.Run, model, init, measured: dict) -> None:
    """The init's fidelity per block and head (JSON) and its initial attention maps (PNG), drawn
    here and logged as the run's artifacts by tracking, which draws nothing."""
    with tempfile.TemporaryDirectory() as folder:
        with open(os.path.join(folder, "init_fidelity.json"), "w") as f:
            json.dump({"solve_seconds": init.solve_seconds, **measured}, f)
        fidelity.plot_attention(model, init, os.path.join(folder, "init_attention.png"))
        tracking.log_init(run, folder, init.solve_seconds)


def watch_attention(model, init, images: torch.Tensor, trained: int, rows: list[dict]) -> tuple[dict, float]:
    """Measure the model's attention on `images` (attention.measure) after `trained` epochs (0: the
    init), adding its rows, each with `epoch` = trained, to `rows`; returns (each block's head
    means as MLflow metrics, the seconds it took)."""
    start = time.perf_counter()
    measured = attention.measure(model, init, images)
    rows += [{"epoch": trained, **r} for r in measured]
    return attention.block_metrics(measured), time.perf_counter() - start


def usable(device: torch.device) -> torch.device:
    """The accelerator Ray gave this process, or the CPU where torch cannot use it (a node that
    advertises a GPU without a driver: the fake-GPU nodes of the cluster tests). The fallback
    warns, and the run's `device` tag says where it trained."""
    import ray

    if device.type == "cuda" and not torch.cuda.is_available():
        warnings.warn(f"Ray assigned GPU ids {ray.get_gpu_ids()} but torch sees no CUDA device: training on the CPU")
        return torch.device("cpu")
    return device


def train_session() -> Session:
    """A Ray Train worker's session (rank, world size and device from Train)."""
    import ray.train
    import ray.train.torch

    c = ray.train.get_context()
    return Session(Context(c.get_world_rank(), c.get_world_size(), usable(ray.train.torch.get_device())),
                   ray.train.get_checkpoint, ray.train.report, ray.train.Checkpoint)


def tune_session() -> Session:
    """The calling Tune trial's session: one worker, on the GPU (share) Ray gave the trial, if any
    (Ray sets CUDA_VISIBLE_DEVICES to it, so it is cuda:0 here)."""
    import ray
    import ray.tune

    device = torch.device("cuda", 0) if ray.get_gpu_ids() else torch.device("cpu")
    return Session(Context(0, 1, usable(device)), ray.tune.get_checkpoint, ray.tune.report, ray.tune.Checkpoint)


_loops_run = 0  # loops this process has run: Tune reuses a trial's process for the next trial


def process_startup() -> float:
    """Seconds from this process's start to its first loop (process start and imports); 0 for a
    later loop in a process Tune reused, which starts nothing."""
    import psutil

    global _loops_run
    _loops_run += 1
    return time.time() - psutil.Process().create_time() if _loops_run == 1 else 0.0


def train_loop_per_worker(config: dict) -> None:
    """A Ray Train worker of `fit`: `train_loop` reporting to Train."""
    monitored(config, train_session())


def train_in_trial(cfg: TrialConfig, run: tracking.Run | None = None, data=None, expected: str | None = None,
                   built=None) -> list[dict]:
    """Train in the calling Tune trial (one worker): metrics and checkpoints go to Tune, which
    restarts the trial from its latest checkpoint after a failure (its FailureConfig). `built`:
    the data and initialised model `trial_identity` made for it. Returns every epoch's metrics,
    the last epoch's last."""
    return monitored({"trial": cfg, "tracking": run, "data": data, "identity": expected, "built": built},
                     tune_session())


def monitored(config: dict, session: Session) -> list[dict]:
    """`train_loop`, with MLflow's system metrics logged on the run while rank 0 trains."""
    with tracking.system_metrics(config.get("tracking") if session.ctx.rank == 0 else None):
        return train_loop(config, session)


def train_loop(config: dict, session: Session) -> list[dict]:
    """One worker's run, in phases: `prepare` (data, model + init, epoch-0 measures), `announce`
    (identity check, MLflow tags and init artifacts, the near-chance warning), `equip` (device,
    DDP, optimizer), `restore` (the latest checkpoint, if any), then per epoch `run_epoch` (train,
    evaluate, measure) and `save` (MLflow, checkpoint, report to Ray).

    config = {"trial": TrialConfig, "tracking": tracking.Run | None, "data": an ObjectRef of the
    dataset the study read once, or None to read its files, "identity": what the study expects
    this trial's identity to be (config.identity), or None, "built": the (data, model, InitResult)
    `trial_identity` made for this trial in this process, or None}. Returns every epoch's metrics
    (those before a resume from its checkpoint too); each carries the trial's `identity` and
    initial `weights` digest."""
    entered, startup = time.perf_counter(), process_startup()
    cfg: TrialConfig = config["trial"]
    torch.set_num_threads(cfg.cpus_per_worker)
    latest = session.get_checkpoint()
    t = prepare(cfg, session.ctx, config)
    announce(t, config.get("identity"), first=latest is None)
    equip(t)
    p = restore(t, latest)
    # finished before a restart (its study driver was killed): report, train nothing; at a rung (a grouped
    # study paused the trial to wait for its group, which may since have been stopped): its scheduler decides
    # before another epoch trains
    if p.history and (p.start >= cfg.recipe.epochs or p.start in cfg.checkpoint_at):
        session.report(p.history[-1])
    bar = progress_bar(cfg, session.ctx, p.start)
    timing = {"setup_seconds": time.perf_counter() - entered, "startup_seconds": startup,
              "data_from_store": float(config.get("data") is not None)}
    try:  # a failed run closes its bar: the driver would otherwise draw it after the run's last line
        for epoch in range(p.start, cfg.recipe.epochs):
            metrics = run_epoch(t, p, epoch, timing)
            save(t, p, session, metrics, epoch)
            advance(bar, cfg, metrics)
    finally:
        if bar is not None:
            bar.close()
    return p.history


@dataclass
class Training:
    """What one worker's run trains with, built once before its first epoch: by `prepare` the data,
    loaders and mixup, the model (`raw`) and its init, the held-out images and the epoch-0 measures
    (`fid`, reported with every epoch; `measured`, the init's full fidelity, for its artifacts); by
    `equip` what trains (`model`: `raw` under DDP and torch.compile where they apply), the
    optimizer, schedule, AMP dtype, grad scaler and loss. `run` is rank 0's MLflow run (None on
    the other ranks, and without tracking): only rank 0 logs."""

    cfg: TrialConfig
    ctx: Context
    run: tracking.Run | None
    data: datasets.Data
    raw: torch.nn.Module
    init: object  # inits.InitResult
    loaders: dict
    mixup: Mixup | None
    held_out: torch.Tensor
    fid: dict
    measured: dict
    model: torch.nn.Module | None = None
    optimizer: torch.optim.Optimizer | None = None
    scheduler: CosineLRScheduler | None = None
    scaler: torch.amp.GradScaler | None = None
    loss_fn: torch.nn.Module | None = None
    dtype: torch.dtype | None = None

    @property
    def watch(self) -> bool:
        """Whether this worker measures attention: a ViT's (a ConvMixer has none), on rank 0, which checkpoints."""
        return self.ctx.rank == 0 and bool(self.init.offsets)


@dataclass
class Progress:
    """How far a run is, as its checkpoint carries it (`restore`) and each epoch moves it on."""

    start: int = 0  # the first epoch to train
    updates: int = 0  # optimizer steps so far: where the lr schedule is
    history: list = field(default_factory=list)  # every epoch's metrics
    best: dict = field(default_factory=lambda: {"epoch": None, "val_top1": -math.inf, "model": None})
    attention_rows: list = field(default_factory=list)  # every attention measure (attention.json)
    spent: float = 0.0  # seconds spent measuring attention since the last report
    logged: int = -1  # the last epoch MLflow holds (an interrupted attempt's), -1: none
    logged_attention: int = -1  # the last step of the attention's MLflow metrics, -1: none


def prepare(cfg: TrialConfig, ctx: Context, config: dict) -> Training:
    """The run's data, model and init (`build`: from the study's shared dataset, or what
    `trial_identity` built) and its epoch-0 measures (`initial_measures`) on `data.held_out`: a
    seeded batch of validation images (training images without a validation split), never test
    ones, also what its attention is measured on. The trial's identity and initial weights digest
    join the measures (reported with every epoch, not to MLflow)."""
    import ray

    shared = config.get("data")
    d, model, init, loaders, mixup = build(cfg, ctx, ray.get(shared) if shared is not None else None,
                                           config.get("built"))
    sample = datasets.held_out(d, 64, cfg.seed)
    fid, measured = initial_measures(model, cfg, init, sample)
    weights = weights_digest(model)
    fid.update(identity=identity(cfg, weights), weights=weights)
    run = config.get("tracking") if ctx.rank == 0 else None
    return Training(cfg, ctx, run, d, model, init, loaders, mixup, sample, fid, measured)


def announce(t: Training, expected: str | None, first: bool) -> None:
    """What a run says before it trains: a warning where its initial weights are not those the study
    built for it (`expected`, their identity); on rank 0, MLflow tags of where it runs (the latest
    attempt), CUDA/cuDNN and the dataset input, the init's artifacts (`first`: not on a resume),
    and a warning (and tag) where the init's attention on real images is near chance."""
    import ray

    cfg, fid = t.cfg, t.fid
    if expected not in (None, fid["identity"]):
        warnings.warn(f"{cfg.init.name} init, seed {cfg.seed}: the initial weights differ from those the study "
                      f"built for this trial (identity {fid['identity']}, expected {expected}): the init is "
                      "not deterministic here")
    if t.run is not None:
        tracking.set_tags(t.run, {"device": t.ctx.device, "node_id": ray.get_runtime_context().get_node_id(),
                                  "hostname": socket.gethostname()})
        tracking.log_training(t.run, cfg, t.data, t.ctx.device)
        if first and t.init.pseudo_inputs:
            log_init(t.run, t.raw, t.init, t.measured)
    if t.ctx.rank == 0 and t.measured and fidelity.near_chance(fid["init_hit_data"], fid["init_hit_chance"]):
        warnings.warn(f"{cfg.init.name} init: the attention's argmax hit on real images is "
                      f"{fid['init_hit_data']:.3f}, under twice chance ({fid['init_hit_chance']:.3f}): its structure "
                      "does not reach the images (tagged init_near_chance)")
        if t.run is not None:
            tracking.set_tags(t.run, {"init_near_chance": "true"})


def equip(t: Training) -> None:
    """The model and the held-out images on the worker's device, the model under DDP (several
    workers) and torch.compile (`compile`); AdamW and its schedule, the AMP dtype, the grad scaler
    (fp16 only) and the loss. The loaders carry their DistributedSampler; batches move in the loop."""
    cfg, ctx = t.cfg, t.ctx
    t.raw = t.model = t.raw.to(ctx.device)
    if ctx.world > 1:
        import ray.train.torch

        t.model = ray.train.torch.prepare_model(t.raw, move_to_device=ctx.device)  # DDP
    if cfg.compile:
        t.model = torch.compile(t.model)
    t.optimizer, t.scheduler = optimizer_and_schedule(cfg, t.raw, len(t.loaders["train"]))
    t.dtype = amp_dtype(cfg, ctx.device)
    t.scaler = torch.amp.GradScaler(ctx.device.type, enabled=t.dtype == torch.float16)
    t.loss_fn = loss_function(cfg)
    t.held_out = t.held_out.to(ctx.device)


def restore(t: Training, latest) -> Progress:
    """Where the run starts: from `latest`, its checkpoint (weights, optimizer, schedule, scaler, the
    epochs and updates done, the best weights, every epoch's metrics and attention measures), or
    afresh, with the init's attention measured (step 0). A resume replays the epochs since the
    checkpoint exactly (each is seeded from seed, rank and epoch) and logs to MLflow only what it
    lacks: `logged` and `logged_attention` are the last steps an interrupted attempt logged."""
    p = Progress()
    if t.run is not None and t.watch:
        p.logged_attention = tracking.last_step(t.run, "attn_distance/b0")
    if latest is not None:
        with latest.as_directory() as folder:
            state, p.history = checkpoint.read(folder, t.ctx.device)
            p.attention_rows = checkpoint.read_attention(folder)
        t.raw.load_state_dict(state["model"])
        t.optimizer.load_state_dict(state["optimizer"])
        t.scheduler.load_state_dict(state["scheduler"])
        t.scaler.load_state_dict(state["scaler"])
        # an older checkpoint kept no best weights
        p.start, p.updates, p.best = state["epoch"] + 1, state["updates"], state.get("best", p.best)
    elif t.watch:
        measure_attention(t, p, 0)
    if t.run is not None:
        p.logged = tracking.last_step(t.run, "train_loss")
    return p


def run_epoch(t: Training, p: Progress, epoch: int, timing: dict) -> dict:
    """Epoch `epoch`: train (`train_epoch`), evaluate (`evaluate_epoch`), at the last epoch the final
    summary, and where a checkpoint is written the attention (`measure_attention`). Its metrics,
    added to the history: `timing` (setup, startup, where the data came from) and the epoch-0
    measures in each. `attention_seconds`, the time attention measures took since the previous
    epoch's report, is part of `eval_seconds` (the first epoch's also holds the init's, in
    `setup_seconds`)."""
    t0 = time.perf_counter()
    stats = train_epoch(t, p, epoch)
    t1, last = time.perf_counter(), epoch == t.cfg.recipe.epochs - 1
    val, test, at_best = evaluate_epoch(t, p, epoch, last)
    metrics = {"epoch": epoch, "train_loss": stats["train_loss"],
               **{f"val_{k}": v for k, v in val.items()}, **{f"test_{k}": v for k, v in test.items()},
               "lr": t.optimizer.param_groups[0]["lr"],
               "images_per_s": stats["images"] * t.ctx.world / stats["train_seconds"],
               "train_seconds": stats["train_seconds"], **timing, **t.fid}
    if last:
        metrics.update(final_summary(test, at_best, p.best, epoch))
    if t.watch and checkpointed(t, epoch):
        measure_attention(t, p, epoch + 1)
    metrics["attention_seconds"], p.spent = p.spent, 0.0
    metrics["eval_seconds"] = time.perf_counter() - t1
    metrics["epoch_seconds"] = time.perf_counter() - t0
    p.history.append(metrics)
    return metrics


def train_epoch(t: Training, p: Progress, epoch: int) -> dict:
    """Epoch `epoch`'s pass over the training split (`train_one_epoch`), moving `p.updates` on.
    Data order, augmentation, mixup/cutmix and drop-path follow from (seed, rank, epoch): a resume
    replays them exactly. timm's Mixup and RandAugment draw from NumPy's and Python's global
    generators, so those are seeded with torch's."""
    r = t.cfg.recipe
    t.loaders["train"].sampler.set_epoch(epoch)
    seed = t.cfg.seed * 1_000_003 + t.ctx.rank * 1009 + epoch
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
    stats = train_one_epoch(t.model, t.loaders["train"], t.optimizer, t.scheduler, t.loss_fn, device=t.ctx.device,
                            dtype=t.dtype, scaler=t.scaler, grad_clip=r.grad_clip, mixup=t.mixup, epoch=epoch,
                            updates=p.updates)
    p.updates = stats["updates"]
    return stats


def evaluate_epoch(t: Training, p: Progress, epoch: int, last: bool) -> tuple[dict, dict, dict]:
    """(val, test, at_best) after epoch `epoch`. The (capped) validation split every epoch: it feeds
    ASHA and model selection, and the best epoch's weights are kept. The test set only at the end,
    in one pass over the final model and the best-validation one (`at_best`; the final model's own
    where that is the best), and every epoch with `test_every_epoch` ({}: not evaluated)."""
    evaluation = dict(device=t.ctx.device, dtype=t.dtype, world=t.ctx.world)
    val = evaluate([t.raw], t.loaders["val"], **evaluation)[0] if len(t.data.val) else {}
    if val and val["top1"] > p.best["val_top1"]:  # every rank sees the same (all-reduced) accuracy
        p.best = {"epoch": epoch, "val_top1": val["top1"],
                  "model": {k: v.detach().to("cpu", copy=True) for k, v in t.raw.state_dict().items()}}
    tested = [t.raw, *([best_model(t.raw, p.best)] if last and p.best["epoch"] not in (None, epoch) else [])]
    test, *at_best = evaluate(tested, t.loaders["test"], **evaluation) if t.cfg.test_every_epoch or last else [{}]
    return val, test, at_best[0] if at_best else test


def measure_attention(t: Training, p: Progress, trained: int) -> None:
    """The attention on the held-out images after `trained` epochs (0: the init; attention.py): per
    block and head into the checkpoint's rows (`attention.json`), per block to MLflow
    (`attn_distance/b0`, ...) with `trained` as the step, unless an interrupted attempt logged it."""
    means, seconds = watch_attention(t.raw, t.init, t.held_out, trained, p.attention_rows)
    p.spent += seconds
    if t.run is not None and trained > p.logged_attention:
        tracking.log_epoch(t.run, means, step=trained)


def checkpointed(t: Training, epoch: int) -> bool:
    """Whether epoch `epoch` ends with a checkpoint (rank 0 writes them): every `checkpoint_every`
    epochs, after each epoch of `checkpoint_at` (a grouped study's rungs) and at the end."""
    cfg = t.cfg
    return t.ctx.rank == 0 and (epoch == cfg.recipe.epochs - 1 or (epoch + 1) % cfg.checkpoint_every == 0
                                or epoch + 1 in cfg.checkpoint_at)


def save(t: Training, p: Progress, session: Session, metrics: dict, epoch: int) -> None:
    """Epoch `epoch`'s metrics to MLflow (unless an interrupted attempt logged them) and to Ray, with
    a checkpoint where one is due (`checkpointed`): the weights, optimizer, schedule, scaler, best
    weights and config, every epoch's metrics and the attention measures."""
    if t.run is not None and epoch > p.logged:
        tracking.log_epoch(t.run, metrics, step=epoch)
    with tempfile.TemporaryDirectory() as folder:
        ckpt = None
        if checkpointed(t, epoch):
            checkpoint.write(folder, {"model": t.raw.state_dict(), "optimizer": t.optimizer.state_dict(),
                                      "scheduler": t.scheduler.state_dict(), "scaler": t.scaler.state_dict(),
                                      "epoch": epoch, "updates": p.updates, "best": p.best,
                                      "config": t.cfg.to_dict()}, p.history, p.attention_rows if t.watch else None)
            ckpt = session.Checkpoint.from_directory(folder)
        session.report(metrics, checkpoint=ckpt)


def progress_bar(cfg: TrialConfig, ctx: Context, start: int):
    """Rank 0's progress bar over the run's epochs (Ray's, drawn by the driver), `start` of them done."""
    if ctx.rank != 0:
        return None
    from ray.experimental.tqdm_ray import tqdm

    bar = tqdm(desc=f"{cfg.dataset} {cfg.init.name} seed {cfg.seed}", total=cfg.recipe.epochs, unit="epoch")
    bar.update(start)
    return bar


def advance(bar, cfg: TrialConfig, metrics: dict) -> None:
    """One epoch more on the bar, with its training loss and validation accuracy."""
    if bar is None:
        return
    bar.set_description(f"{cfg.dataset} {cfg.init.name} seed {cfg.seed} loss {metrics['train_loss']:.3f} "
                        + (f"val {metrics['val_top1']:.1f}%" if "val_top1" in metrics else ""))
    bar.update(1)


def best_model(raw, best: dict):
    """A copy of the model with the best validation epoch's weights."""
    chosen = copy.deepcopy(raw)
    chosen.load_state_dict(best["model"])
    return chosen


def final_summary(test: dict, at_best: dict, best: dict, epoch: int) -> dict:
    """`metrics.FINAL`: the test accuracy of the final model and of the best-validation epoch's
    weights, the best validation accuracy (without a validation split: none, and the last epoch
    is the best), and which epoch that was."""
    best_val = best["val_top1"] if best["epoch"] is not None else math.nan
    best_epoch = epoch if best["epoch"] is None else best["epoch"]
    return dict(zip(FINAL, (test["top1"], at_best["top1"], best_val, best_epoch)))


def check_target(address: str | None, gpus: float, tracking_uri: str, **gpu_flag) -> None:
    """Where runs go, checked before anything is created there (by `structinit train` and every
    study alike): a Ray address that answers, the GPUs a new local cluster would need (refused
    naming `gpu_flag`: cluster.check_local_gpus), an MLflow store that can be used."""
    cluster.check_address(address)
    cluster.check_local_gpus(address, gpus, **gpu_flag)
    tracking.check(tracking_uri)


def run_name(cfg: TrialConfig) -> str:
    return f"train-{cfg.dataset}-{cfg.init.name}-s{cfg.seed}-{cfg.digest()}"


# How often the Train controller polls its workers (Ray's default 2 s): a trial's start and end
# wait on it, a fixed cost that dominates small trials; 0.2 s costs the controller nothing visible.
HEALTH_CHECK = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"}


def fit(cfg: TrialConfig, *, storage_path: str, name: str | None = None, run: tracking.Run | None = None,
        callbacks=(), data=None, expected: str | None = None):
    """Run one training to completion on the connected Ray cluster; returns the Ray Train Result.
    The same `name` under the same `storage_path` resumes from its latest checkpoint. `data`: an
    ObjectRef of the (pool, test) splits, read once by a study and shared by its trials;
    `expected`: the trial's identity as the study computed it (train_loop checks it)."""
    import ray
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    for key, value in HEALTH_CHECK.items():  # the controller inherits this process's environment
        os.environ.setdefault(key, value)
    resources = cfg.worker_resources()
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"trial": cfg, "tracking": run, "data": data, "identity": expected},
        torch_config=TorchConfig(backend=cfg.backend),
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=name or run_name(cfg), storage_path=storage_path, callbacks=list(callbacks),
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2)),
    )
    return trainer.fit()
