"""One training run: `train_loop`, run by Ray Train's workers or by a Ray Tune trial itself.

    fit(cfg)           ->  TorchTrainer(train_loop_per_worker, {"trial": cfg, ...}).fit()   any workers (DDP)
    train_in_trial(cfg) ->  train_loop(..., tune_session())   one worker, inside the calling Tune trial:
                           no Train controller, worker group or placement group to start and tear down
    train_loop:        data -> model + init (fidelity at epoch 0) -> (DDP) -> epochs of train + eval,
                       reported to Ray with a cadenced checkpoint, resumed from the latest one on restart.

The loop reaches Ray only through its `Session` (report, latest checkpoint, where it runs); `runner.py`
picks one per trial.
"""
from __future__ import annotations

import copy
import json
import math
import os
import socket
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from torch.utils.data import DataLoader, DistributedSampler, Subset

from structinit import attention, checkpoint, cluster, fidelity, rank, tracking
from structinit import data as datasets
from structinit.config import TrialConfig, build_model, data_kwargs, identity, weights_digest
from structinit.inits import needs_images
from structinit.inits.default import pe_scale


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
    """config = {"trial": TrialConfig, "tracking": tracking.Run | None, "data": an ObjectRef of the
    dataset the study read once, or None to read its files, "identity": what the study expects
    this trial's identity to be (config.identity), or None, "built": the (data, model, InitResult)
    `trial_identity` made for this trial in this process, or None}. Returns every epoch's metrics
    (those before a resume from its checkpoint too); each carries the trial's `identity` and
    initial `weights` digest.

    The epoch-0 measures (rank k, the attention's fidelity on real images, the near-chance warning)
    read `data.held_out`: a seeded batch of validation images (training images without a validation
    split). Every epoch trains, then evaluates the (capped) validation split, which feeds ASHA and
    model selection; the weights of the best validation epoch are kept. The test set is read only at
    the end, in one pass that evaluates the final model (`final_test_top1`) and the best-validation
    one (`test_top1_at_best_val`); every epoch too with `test_every_epoch`. A checkpoint is written
    every `checkpoint_every` epochs, after each epoch of `checkpoint_at` (a grouped study's rungs)
    and at the end; a resume replays the epochs since the last one exactly (each epoch is seeded
    from seed, rank and epoch) and logs to MLflow only what it lacks. A resume at a rung reports
    that epoch again before it trains on, so that its scheduler decides there first (the trial was
    paused to wait for its group, which may since have been stopped).

    A ViT's attention is measured on the same held-out images at the init and wherever a checkpoint
    is written (attention.py), on rank 0: per block and head in the checkpoint (`attention.json`),
    per block to MLflow (`attn_distance/b0`, ...) with the epochs trained as the step (0: the init;
    the measure after epoch e is step e + 1). `attention_seconds` is the time those measures took
    since the previous epoch's report: part of its `eval_seconds`, and the first epoch's also holds
    the init's (in `setup_seconds`)."""
    import ray

    entered = time.perf_counter()
    startup = process_startup()
    cfg: TrialConfig = config["trial"]
    run: tracking.Run | None = config.get("tracking")
    torch.set_num_threads(cfg.cpus_per_worker)
    ctx = session.ctx
    latest = session.get_checkpoint()
    shared = config.get("data")
    d, model, init, loaders, mixup = build(cfg, ctx, ray.get(shared) if shared is not None else None,
                                           config.get("built"))
    sample = datasets.held_out(d, 64, cfg.seed)  # validation images (training without a split), never test ones
    fid, measured = initial_measures(model, cfg, init, sample)
    watch = ctx.rank == 0 and bool(init.offsets)  # a ViT (a ConvMixer has no attention); rank 0 checkpoints
    weights = weights_digest(model)
    fid.update(identity=identity(cfg, weights), weights=weights)  # reported with every epoch (not to MLflow)
    if config.get("identity") not in (None, fid["identity"]):
        warnings.warn(f"{cfg.init.name} init, seed {cfg.seed}: the initial weights differ from those the study "
                      f"built for this trial (identity {fid['identity']}, expected {config['identity']}): the init is "
                      "not deterministic here")
    if ctx.rank == 0 and run is not None:
        tracking.set_tags(run, {"device": ctx.device, "node_id": ray.get_runtime_context().get_node_id(),
                                "hostname": socket.gethostname()})  # where rank 0 ran (the latest attempt)
        tracking.log_training(run, cfg, d, ctx.device)  # CUDA/cuDNN, the dataset input
        if latest is None and init.pseudo_inputs:
            log_init(run, model, init, measured)
    if ctx.rank == 0 and measured and fidelity.near_chance(fid["init_hit_data"], fid["init_hit_chance"]):
        warnings.warn(f"{cfg.init.name} init: the attention's argmax hit on real images is "
                      f"{fid['init_hit_data']:.3f}, under twice chance ({fid['init_hit_chance']:.3f}): its structure "
                      "does not reach the images (tagged init_near_chance)")
        if run is not None:
            tracking.set_tags(run, {"init_near_chance": "true"})

    raw = model.to(ctx.device)
    if ctx.world > 1:
        import ray.train.torch

        model = ray.train.torch.prepare_model(raw, move_to_device=ctx.device)  # DDP
    if cfg.compile:
        model = torch.compile(model)
    sampler = loaders["train"].sampler  # the loaders carry their DistributedSampler; batches move in the loop
    r = cfg.recipe
    optimizer, scheduler = optimizer_and_schedule(cfg, raw, len(loaders["train"]))
    dtype = amp_dtype(cfg, ctx.device)
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=dtype == torch.float16)
    loss_fn = loss_function(cfg)
    evaluation = dict(device=ctx.device, dtype=dtype, world=ctx.world)

    start, updates, history, best, logged = 0, 0, [], {"epoch": None, "val_top1": -math.inf, "model": None}, -1
    held_out, attention_rows, spent, logged_attention = sample.to(ctx.device), [], 0.0, -1
    if ctx.rank == 0 and run is not None and watch:
        logged_attention = tracking.last_step(run, "attn_distance/b0")
    if latest is not None:
        with latest.as_directory() as folder:
            state, history = checkpoint.read(folder, ctx.device)
            attention_rows = checkpoint.read_attention(folder)
        raw.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start, updates, best = state["epoch"] + 1, state["updates"], state.get("best", best)  # older: none kept
    elif watch:  # the init's attention, before any training
        means, spent = watch_attention(raw, init, held_out, 0, attention_rows)
        if run is not None and logged_attention < 0:
            tracking.log_epoch(run, means, step=0)
    if ctx.rank == 0 and run is not None:  # epochs an interrupted attempt logged after the checkpoint (or
        logged = tracking.last_step(run, "train_loss")  # before the first): replayed exactly, logged once
    if start >= r.epochs and history:  # finished before a restart (its study driver was killed): report, train nothing
        session.report(history[-1])
    elif start in cfg.checkpoint_at and history:  # at a rung: its scheduler decides before another epoch trains
        session.report(history[-1])

    bar = None
    if ctx.rank == 0:
        from ray.experimental.tqdm_ray import tqdm

        bar = tqdm(desc=f"{cfg.dataset} {cfg.init.name} seed {cfg.seed}", total=r.epochs, unit="epoch")
        bar.update(start)
    setup = time.perf_counter() - entered
    try:  # a failed run closes its bar: the driver would otherwise draw it after the run's last line
        for epoch in range(start, r.epochs):
            # data order, augmentation and drop-path follow from (seed, rank, epoch): a resume replays them exactly
            sampler.set_epoch(epoch)
            torch.manual_seed(cfg.seed * 1_000_003 + ctx.rank * 1009 + epoch)
            t0 = time.perf_counter()
            stats = train_one_epoch(model, loaders["train"], optimizer, scheduler, loss_fn, device=ctx.device,
                                    dtype=dtype, scaler=scaler, grad_clip=r.grad_clip, mixup=mixup, epoch=epoch,
                                    updates=updates)
            updates = stats["updates"]
            t1, last = time.perf_counter(), epoch == r.epochs - 1
            # a checkpoint, attention measured
            saved = ctx.rank == 0 and (last or (epoch + 1) % cfg.checkpoint_every == 0
                                       or epoch + 1 in cfg.checkpoint_at)
            val = evaluate([raw], loaders["val"], **evaluation)[0] if len(d.val) else {}
            if val and val["top1"] > best["val_top1"]:  # every rank sees the same (all-reduced) accuracy
                best = {"epoch": epoch, "val_top1": val["top1"],
                        "model": {k: v.detach().to("cpu", copy=True) for k, v in raw.state_dict().items()}}
            tested = [raw, *([best_model(raw, best)] if last and best["epoch"] not in (None, epoch) else [])]
            test, *at_best = evaluate(tested, loaders["test"], **evaluation) if cfg.test_every_epoch or last else [{}]
            metrics = {"epoch": epoch, "train_loss": stats["train_loss"],
                       **{f"val_{k}": v for k, v in val.items()}, **{f"test_{k}": v for k, v in test.items()},
                       "lr": optimizer.param_groups[0]["lr"],
                       "images_per_s": stats["images"] * ctx.world / stats["train_seconds"],
                       "train_seconds": stats["train_seconds"], "setup_seconds": setup, "startup_seconds": startup,
                       "data_from_store": float(shared is not None), **fid}
            if last:
                metrics.update(final_summary(test, at_best[0] if at_best else test, best, epoch))
            if watch and saved:
                means, seconds = watch_attention(raw, init, held_out, epoch + 1, attention_rows)
                spent += seconds
                if run is not None and epoch + 1 > logged_attention:
                    tracking.log_epoch(run, means, step=epoch + 1)
            metrics["attention_seconds"], spent = spent, 0.0
            metrics["eval_seconds"] = time.perf_counter() - t1
            metrics["epoch_seconds"] = time.perf_counter() - t0
            history.append(metrics)
            if ctx.rank == 0 and run is not None and epoch > logged:
                tracking.log_epoch(run, metrics, step=epoch)
            with tempfile.TemporaryDirectory() as folder:
                ckpt = None
                if saved:
                    checkpoint.write(folder, {"model": raw.state_dict(), "optimizer": optimizer.state_dict(),
                                              "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                                              "epoch": epoch, "updates": updates, "best": best,
                                              "config": cfg.to_dict()}, history, attention_rows if watch else None)
                    ckpt = session.Checkpoint.from_directory(folder)
                session.report(metrics, checkpoint=ckpt)
            if bar is not None:
                bar.set_description(f"{cfg.dataset} {cfg.init.name} seed {cfg.seed} loss {stats['train_loss']:.3f} "
                                    + (f"val {val['top1']:.1f}%" if val else ""))
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return history


def best_model(raw, best: dict):
    """A copy of the model with the best validation epoch's weights."""
    chosen = copy.deepcopy(raw)
    chosen.load_state_dict(best["model"])
    return chosen


def final_summary(test: dict, at_best: dict, best: dict, epoch: int) -> dict:
    """The test accuracy of the final model and of the best-validation epoch's weights (without a
    validation split the last epoch is the best), and which epoch that was."""
    return {"final_test_top1": test["top1"], "test_top1_at_best_val": at_best["top1"],
            "best_val_top1": best["val_top1"] if best["epoch"] is not None else math.nan,
            "best_val_epoch": epoch if best["epoch"] is None else best["epoch"]}


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
