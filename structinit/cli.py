"""`structinit` command line: inspect-init, train, report, sync, rank, fetch."""
from __future__ import annotations

import argparse
import json
import sys

from structinit.inits import InitConfig
from structinit.validate import Parser


def _mass(text: str) -> float | None:
    return None if text.lower() == "none" else float(text)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model (a timm ViT name; the flags override its geometry)")
    g.add_argument("--model", default="vit_tiny_patch2_32", help="a timm ViT name (train: default suits the dataset)")
    g.add_argument("--img-size", type=int)
    g.add_argument("--patch-size", type=int)
    g.add_argument("--embed-dim", type=int)
    g.add_argument("--depth", type=int)
    g.add_argument("--num-heads", type=int)
    g.add_argument("--pos-embed", help="learn | sincos (structinit models)")
    g.add_argument("--global-pool", help="avg | token")
    g.add_argument("--kernel-size", type=int, help="ConvMixer: the depthwise filters' size")


def _add_init_args(p: argparse.ArgumentParser) -> None:
    d = InitConfig()
    g = p.add_argument_group("init")
    g.add_argument("--init", default=d.name, help="ViT: default | torch_default | pe_scaled | mimetic | impulse; "
                   "ConvMixer: learned | frozen_random | frozen_impulse | frozen_box")
    g.add_argument("--base", default=d.base, help="timm | torch: weights the init does not set")
    g.add_argument("--filter-size", type=int, default=d.filter_size)
    g.add_argument("--offsets", default=d.offsets, help="cover | random")
    g.add_argument("--pseudo-input", default=d.pseudo_input, help="pe | uniform | gaussian | pe+uniform | pe+gaussian")
    g.add_argument("--solver", default=d.solver, help="closed_form | gradient")
    g.add_argument("--target-mass", type=_mass, default=d.target_mass,
                   help="attention mass on the impulse tap, in (0, 1); 'none' = raw v1 gradient solve")
    g.add_argument("--qk", default=d.qk, help="per_block | shared")
    g.add_argument("--value-proj", default=d.value_proj, help="default | mimetic")
    g.add_argument("--pe-scale", type=float, default=d.pe_scale)
    g.add_argument("--target-shape", default=d.target_shape, help="impulse | box | gaussian (a blob around each tap)")
    g.add_argument("--blob", type=int, default=d.blob, help="box/gaussian: the blob's side")
    g.add_argument("--blob-sigma", type=float, default=d.blob_sigma)
    g.add_argument("--mix", help="noise | mimetic: blend the target with it before the solve")
    g.add_argument("--mix-ratio", type=float, default=d.mix_ratio)
    g.add_argument("--distinct-filters", type=int, help="ConvMixer: filters shared across the channels")
    g.add_argument("--seed", type=int, default=0)


def init_config(args: argparse.Namespace) -> InitConfig:
    return InitConfig(name=args.init, base=args.base, filter_size=args.filter_size, offsets=args.offsets,
                      pseudo_input=args.pseudo_input, solver=args.solver, target_mass=args.target_mass,
                      qk=args.qk, value_proj=args.value_proj, pe_scale=args.pe_scale,
                      target_shape=args.target_shape, blob=args.blob, blob_sigma=args.blob_sigma, mix=args.mix,
                      mix_ratio=args.mix_ratio, distinct_filters=args.distinct_filters)


def geometry(args: argparse.Namespace) -> dict:
    """The model flags given (None where not), by ModelConfig field."""
    from structinit.config import MODEL_FIELDS

    return {k: getattr(args, k, None) for k in MODEL_FIELDS}


def inspect_init(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from structinit import fidelity
    from structinit.config import ModelConfig, build_model

    try:
        cfg = init_config(args)
        model, result = build_model(ModelConfig(args.model, **geometry(args)), cfg, args.seed)
    except ValueError as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    blocks = fidelity.measure(model, result)["pseudo"]
    if args.plot:
        fidelity.plot_attention(model, result, args.plot)
    if args.json:
        print(json.dumps({"solve_seconds": result.solve_seconds, "blocks": blocks, "model": args.model,
                          "init": cfg.to_dict(), "seed": args.seed}))
        return 0
    print(f"{args.model}  init={cfg.name}  seed={args.seed}  solve {result.solve_seconds:.3f} s")
    print(f"{'block':>5} {'head':>4} {'offset':>8} {'mass':>7} {'hit':>6}")
    for b in blocks:
        for h in b["heads"]:
            print(f"{b['block']:>5} {h['head']:>4} {str(tuple(h['offset'])):>8} "
                  f"{h['target_mass']:>7.3f} {h['argmax_hit']:>6.3f}")
    return 0


def _add_train_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="digits", help="digits | cifar10 | cifar100 | svhn | stl10 | flowers102 | "
                   "pets | food101 | mnist | fashion_mnist | imagefolder")
    g.add_argument("--data-root", help="local directory in the dataset's standard on-disk format")
    g.add_argument("--download", action="store_true", help="fetch the dataset into --data-root if missing")
    g.add_argument("--no-verify", dest="verify", action="store_false",
                   help="check only that the files exist, not torchvision's md5s (re-packed or generated files)")
    g.add_argument("--fraction", type=float, default=1.0, help="stratified share of the training data used")
    g.add_argument("--val-fraction", type=float, default=0.1)
    g = p.add_argument_group("recipe (a named preset; the flags override its fields)")
    g.add_argument("--recipe", help="v1_small | followup_small | imagenet | cpu (default: suits the dataset)")
    g.add_argument("--epochs", type=int)
    g.add_argument("--batch-size", type=int)
    g.add_argument("--lr", type=float)
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--warmup-epochs", type=int)
    g.add_argument("--grad-clip", type=float)
    g = p.add_argument_group("resources")
    g.add_argument("--workers", type=int, default=1, help="Ray Train workers (DDP)")
    g.add_argument("--cpus-per-worker", type=int, default=1)
    g.add_argument("--gpu", action="store_true", help="one GPU per worker, AMP (bf16 where supported)")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--max-failures", type=int, default=2, help="worker-group restarts from the last checkpoint")
    g.add_argument("--address", help="Ray cluster to attach to, e.g. auto (default: RAY_ADDRESS, else a new local one)")
    g = p.add_argument_group("tracking and output")
    g.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db)")
    g.add_argument("--experiment", default="structinit-train")
    g.add_argument("--storage-path", default="runs", help="Ray Train storage: checkpoints and run state")
    g.add_argument("--name", help="run name (default: from the config; the same name resumes)")
    g.add_argument("--json-out", metavar="PATH", help="write the final JSON summary here too")


def trial_config(args: argparse.Namespace):
    from structinit.config import make

    recipe_overrides = {k: getattr(args, k) for k in ("epochs", "batch_size", "lr", "weight_decay",
                                                      "warmup_epochs", "grad_clip")}
    return make(args.dataset, model=args.model, recipe_name=args.recipe, recipe_overrides=recipe_overrides,
                model_overrides=geometry(args), init=init_config(args), data_root=args.data_root,
                download=args.download, verify=args.verify, fraction=args.fraction, val_fraction=args.val_fraction,
                seed=args.seed, workers=args.workers, gpu=args.gpu, cpus_per_worker=args.cpus_per_worker,
                compile=args.compile, max_failures=args.max_failures)


def train(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import os

    from structinit import config, tracking
    from structinit.checkpoint import history_of
    from structinit.cluster import connect
    from structinit.train import fit, run_name

    try:
        cfg = trial_config(args)
        config.validate(cfg)
    except ValueError as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    name = args.name or run_name(cfg)
    uri = args.tracking_uri or tracking.default_uri()
    run = tracking.start_run(uri, args.experiment, name, cfg.flat(),
                             {"init": cfg.init.name, "dataset": cfg.dataset, "seed": cfg.seed, "model": cfg.model.name})
    import ray
    from ray.train import TrainingFailedError

    connect(args.address, num_cpus=max(2, cfg.workers * cfg.cpus_per_worker), num_gpus=cfg.workers if cfg.gpu else None)
    try:
        result = fit(cfg, storage_path=os.path.abspath(args.storage_path), name=name, run=run)
    except TrainingFailedError as err:
        tracking.finish(run, "FAILED")
        print(f"{parser.prog}: run {name} failed: {err}", file=sys.stderr)
        return 1
    finally:
        ray.shutdown()
    tracking.finish(run)
    history = history_of(result)
    summary = {"name": name, "tracking_uri": uri, "mlflow_run_id": run.run_id,
               "checkpoint": result.checkpoint.path if result.checkpoint else None,
               "epochs": len(history), "final": history[-1] if history else None,
               "best_val_top1": max((h.get("val_top1", 0.0) for h in history), default=None),
               "best_test_top1": max((h["test_top1"] for h in history), default=None),
               "config": cfg.to_dict(), "history": history}
    text = json.dumps(summary)
    if args.json_out:
        with open(args.json_out, "w") as f:
            f.write(text)
    print(text)
    return 0


def report(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from structinit.report import report as build

    try:
        print(build(args.study, storage=args.storage, tracking_uri=args.tracking_uri, optuna_url=args.optuna_url))
    except ValueError as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    return 0


def sync(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Write what MLflow lacks of a study's executions from its Parquet tables, and record the
    run ids in them (after MLflow was unreachable during a study)."""

    from structinit import results, tracking
    from structinit.paths import StudyPaths
    from structinit.validate import check

    folder = StudyPaths(args.storage, args.study).folder
    uri = args.tracking_uri or tracking.default_uri()
    try:
        names = results.executions(folder)
        check("study", args.study, f"a study with results under {folder}/results", bool(names))
        if args.execution:
            check("execution", args.execution, f"one of {names}", args.execution in names)
            names = [args.execution]
        tracking.check(uri)
    except ValueError as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    for execution in names:
        trials, history = results.read(folder, execution)
        ids = tracking.sync(uri, args.study, execution, trials, history)
        for t in trials:
            t["mlflow_run_id"] = ids.get(t["trial_id"])
        results.write(folder, execution, trials, history)
        print(f"{execution}: {len(ids)} trial runs, {len(history)} epochs checked in MLflow at {uri}")
    return 0


def rank(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import torch

    from structinit import data
    from structinit.checkpoint import load_state, state_path
    from structinit.config import build_model, data_kwargs, make
    from structinit.rank import measure, text

    try:
        cfg = make(args.dataset, model=args.model, data_root=args.data_root, verify=args.verify,
                   model_overrides=geometry(args), init=init_config(args))
        d = data.build(cfg.dataset, cfg.data_root, img_size=cfg.model.img_size, fraction=1.0, val_fraction=0.0,
                       seed=args.seed, recipe=cfg.recipe, verify=cfg.verify)
        model, _ = build_model(cfg.model, None if args.checkpoint else cfg.init, args.seed,
                               **data_kwargs(cfg, d.num_classes))
        if args.checkpoint:
            model.load_state_dict(load_state(state_path(args.checkpoint), "cpu")["model"])
    except (ValueError, OSError, RuntimeError, KeyError) as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    images = torch.stack([d.test[i][0] for i in range(min(args.images, len(d.test)))])
    m = measure(model, images, args.filter_size, rtol=args.rtol)
    m.update(model=args.model, dataset=args.dataset, source=args.checkpoint or f"init {cfg.init.name} seed {args.seed}")
    print(json.dumps(m) if args.json else f"{args.model} on {args.dataset} ({m['source']})\n{text(m)}")
    return 0


def fetch(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from structinit.data import load_splits

    try:
        train, test = load_splits(args.dataset, args.data_root, download=True)
    except ValueError as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    print(f"{args.dataset} under {args.data_root}: {len(train)} train, {len(test)} test images")
    return 0


def _add_study_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("study", help="the study's name, e.g. heads_vs_dim")
    p.add_argument("--storage", default="runs", help="the studies' storage folder (default ./runs)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db)")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="structinit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("inspect-init", help="initialise a ViT and print its attention's fidelity to the impulse targets")
    _add_model_args(p)
    _add_init_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object (solve_seconds, blocks)")
    p.add_argument("--plot", metavar="PATH", help="write a PNG of block 0's initial attention maps")
    p.set_defaults(run=inspect_init, parser=p)
    p = sub.add_parser("train", help="train one initialised ViT with Ray Train (TorchTrainer), tracked in MLflow")
    _add_model_args(p)
    _add_init_args(p)
    _add_train_args(p)
    p.set_defaults(run=train, parser=p, model=None)
    p = sub.add_parser("report", help="comparison table, paired differences and plots of a study's results")
    _add_study_args(p)
    p.add_argument("--optuna-url", help="the study's Optuna storage URL (default sqlite in its folder)")
    p.set_defaults(run=report, parser=p)
    p = sub.add_parser("sync", help="write what MLflow lacks of a study (runs, metrics, statuses) from its Parquet "
                       "tables: after MLflow was unreachable during the study")
    _add_study_args(p)
    p.add_argument("--execution", help="one execution (default: all of the study's)")
    p.set_defaults(run=sync, parser=p)
    p = sub.add_parser("rank", help="numerical and stable rank k of a model's patch embeddings on a dataset, "
                       "against the widths D >= k f^2, h >= f^2, D/h >= k")
    _add_model_args(p)
    _add_init_args(p)
    p.add_argument("--dataset", default="digits")
    p.add_argument("--data-root")
    p.add_argument("--no-verify", dest="verify", action="store_false")
    p.add_argument("--checkpoint", help="a run's checkpoint folder (or its state.pt) instead of the init")
    p.add_argument("--images", type=int, default=64, help="test images k is measured on (median)")
    p.add_argument("--rtol", type=float, default=1e-2, help="singular values >= rtol x the largest count")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=rank, parser=p)
    p = sub.add_parser("fetch", help="download a dataset in torchvision's layout (the cluster configs run it on every node)")
    p.add_argument("dataset")
    p.add_argument("--data-root", required=True)
    p.set_defaults(run=fetch, parser=p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args, args.parser)


if __name__ == "__main__":
    sys.exit(main())
