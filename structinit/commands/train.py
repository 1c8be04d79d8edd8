"""`structinit train`: train one initialised model with Ray Train (TorchTrainer), tracked in
MLflow; prints (and with --json-out writes) a JSON summary of the run."""
from __future__ import annotations

import argparse
import json
import sys

from structinit.commands.options import TRACKING_URI, add_init, add_model, geometry, init_config

HELP = "train one initialised ViT with Ray Train (TorchTrainer), tracked in MLflow"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model(p, default=None)
    add_init(p)
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="digits", help="digits | cifar10 | cifar100 | svhn | stl10 | flowers102 | "
                   "pets | food101 | mnist | fashion_mnist | imagefolder")
    g.add_argument("--data-root", help="local directory in the dataset's standard on-disk format")
    g.add_argument("--download", action="store_true", help="fetch the dataset into --data-root if missing")
    g.add_argument("--no-verify", dest="verify", action="store_false",
                   help="check only that the files exist, not torchvision's md5s (re-packed or generated files)")
    g.add_argument("--fraction", type=float, default=1.0, help="stratified share of the training data used")
    g.add_argument("--val-fraction", type=float, default=0.1)
    g.add_argument("--val-size", type=int, default=500, help="at most this many validation images (a stratified, "
                   "seeded subset of the held-out share)")
    g.add_argument("--test-every-epoch", action="store_true",
                   help="evaluate the test set every epoch (default: at the end, final and best-val model)")
    g.add_argument("--checkpoint-every", type=int, default=5, help="epochs between checkpoints (and the last)")
    g.add_argument("--eval-batch-size", type=int, default=256, help="validation and test batch per worker")
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
    g.add_argument("--tracking-uri", help=TRACKING_URI)
    g.add_argument("--experiment", default="structinit-train")
    g.add_argument("--storage-path", default="runs", help="Ray Train storage: checkpoints and run state")
    g.add_argument("--name", help="run name (default: from the config; the same name resumes)")
    g.add_argument("--json-out", metavar="PATH", help="write the final JSON summary here too")


RECIPE_FLAGS = ("epochs", "batch_size", "lr", "weight_decay", "warmup_epochs", "grad_clip")  # Recipe fields


def check_recipe(args: argparse.Namespace) -> None:
    """The recipe the flags name, checked before anything heavy loads (a bad --epochs or --recipe
    answers at once); the dataset's default recipe where none is named (an unknown dataset is
    refused later, by the config; a warning, such as a clipped warmup, comes once, from the config)."""
    import warnings

    from structinit.recipes import DEFAULT_RECIPE, recipe

    name = args.recipe or DEFAULT_RECIPE.get(args.dataset)
    if name:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            recipe(name, **{k: getattr(args, k) for k in RECIPE_FLAGS})


def trial_config(args: argparse.Namespace):
    from structinit.config import make

    return make(args.dataset, model=args.model, recipe_name=args.recipe,
                recipe_overrides={k: getattr(args, k) for k in RECIPE_FLAGS},
                model_overrides=geometry(args), init=init_config(args), data_root=args.data_root,
                download=args.download, verify=args.verify, fraction=args.fraction, val_fraction=args.val_fraction,
                val_size=args.val_size, test_every_epoch=args.test_every_epoch, checkpoint_every=args.checkpoint_every,
                eval_batch_size=args.eval_batch_size, seed=args.seed, workers=args.workers, gpu=args.gpu,
                cpus_per_worker=args.cpus_per_worker, compile=args.compile, max_failures=args.max_failures)


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import os

    from structinit.cluster import check_address

    try:  # what needs nothing heavy answers before it loads
        check_recipe(args)
        check_address(args.address)
    except ValueError as err:
        parser.refuse(err)
    from structinit import config, tracking
    from structinit.checkpoint import history_of
    from structinit.cluster import connect
    from structinit.train import check_target, fit, run_name

    uri = args.tracking_uri or tracking.default_uri()
    try:
        cfg = trial_config(args)
        config.validate(cfg)
        check_target(args.address, cfg.workers if cfg.gpu else 0, uri)
    except ValueError as err:
        parser.refuse(err)
    name = args.name or run_name(cfg)
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
               **{k: history[-1].get(k) if history else None
                  for k in ("final_test_top1", "test_top1_at_best_val", "best_val_top1", "best_val_epoch")},
               "config": cfg.to_dict(), "history": history}
    text = json.dumps(summary)
    if args.json_out:
        with open(args.json_out, "w") as f:
            f.write(text)
    print(text)
    return 0
