"""Attention through training (structinit/attention.py): the measures by hand on attention maps
built as plain tensors, the same numbers on a real model as fidelity.py's, and the real loop
logging them per measured epoch to a real MLflow store, its checkpoints and the Parquet table."""
import math

import pytest
import torch

from structinit.attention import block_metrics, grid_distances, head_measures
from structinit.inits.targets import all_offsets, target_maps

GRID = (5, 5)


def mirrored_impulse(grid, offset) -> torch.Tensor:
    """(N, N) an exact impulse head at `offset`: each query's whole attention on the key `offset`
    away, mirrored on an axis where it would leave the grid (reflect padding), so every query
    looks exactly |offset| patches away (a grid side > 2 |offset| on each axis)."""
    h, w = grid
    probs = torch.zeros(h * w, h * w, dtype=torch.float64)
    for r in range(h):
        for c in range(w):
            dy = offset[0] if 0 <= r + offset[0] < h else -offset[0]
            dx = offset[1] if 0 <= c + offset[1] < w else -offset[1]
            probs[r * w + c, (r + dy) * w + c + dx] = 1.0
    return probs


def test_an_exact_impulse_head_looks_exactly_its_offset_away():
    """distance = sqrt(dy^2 + dx^2) patches for every tap of a 3x3 and a 5x5 window (0 at the
    centre), entropy 0 (one key per query), and all the mass on the tap for every query whose tap
    is inside the grid (the zero-padded targets), each its argmax."""
    offsets = all_offsets(5)  # the 25 taps of a 5x5 window, the 3x3 ones among them
    probs = torch.stack([mirrored_impulse(GRID, o) for o in offsets])[None]  # (1, heads, N, N)
    got = head_measures(probs, target_maps(GRID, offsets) > 0, GRID)
    assert got["distance"].tolist() == pytest.approx([math.hypot(dy, dx) for dy, dx in offsets], abs=1e-12)
    assert got["distance"][offsets.index((0, 0))] == 0
    assert got["entropy"].tolist() == [0.0] * len(offsets)
    assert got["mass"].tolist() == pytest.approx([1.0] * len(offsets)) and got["hit"].tolist() == [1.0] * len(offsets)


def test_uniform_attention_and_a_split_row_by_hand():
    """A 2x2 grid: uniform attention sees each query's 4 keys at 0, 1, 1, sqrt 2 patches: distance
    (2 + sqrt 2) / 4, entropy ln 4, mass 1/4 on a one-key tap whose argmax (a tie) is the first key.
    Half on itself, half on the key to its right or left: distance 1/2, entropy ln 2."""
    grid = (2, 2)
    uniform = torch.full((1, 4, 4), 0.25, dtype=torch.float64)
    tap = target_maps(grid, [(0, 1)]) > 0  # queries in column 0 have a target, column 1 none
    got = head_measures(uniform, tap, grid)
    assert got["distance"].item() == pytest.approx((2 + math.sqrt(2)) / 4)
    assert got["entropy"].item() == pytest.approx(math.log(4))
    assert got["mass"].item() == pytest.approx(0.25) and got["hit"].item() == 0.0  # argmax: key 0, never the tap
    half = 0.5 * (torch.eye(4, dtype=torch.float64) + mirrored_impulse(grid, (0, 1)))[None]
    got = head_measures(half, tap, grid)
    assert got["distance"].item() == pytest.approx(0.5) and got["entropy"].item() == pytest.approx(math.log(2))
    assert got["mass"].item() == pytest.approx(0.5)


def test_a_class_token_is_no_query_and_its_key_weight_is_left_out_of_the_distance():
    """With a class token first: each patch query puts 0.4 on it and 0.6 on its tap. The distance
    stays the tap's (the grid weights renormalised), the entropy counts the class token's share,
    the mass is the tap's 0.6 and its argmax hits; the class token's own row is no query."""
    offset = (1, -1)
    n = GRID[0] * GRID[1]
    probs = torch.zeros(1, n + 1, n + 1, dtype=torch.float64)
    probs[0, 0] = 1.0  # the class token looks only at itself: were it a query, the distance would move
    probs[0, 1:, 0] = 0.4
    probs[0, 1:, 1:] = 0.6 * mirrored_impulse(GRID, offset)
    batch = probs.expand(3, 1, n + 1, n + 1)  # leading batch dims average out
    got = head_measures(batch, target_maps(GRID, [offset]) > 0, GRID, prefix=1)
    assert got["distance"].item() == pytest.approx(math.sqrt(2))
    assert got["entropy"].item() == pytest.approx(-(0.4 * math.log(0.4) + 0.6 * math.log(0.6)))
    assert got["mass"].item() == pytest.approx(0.6) and got["hit"].item() == 1.0


def test_grid_distances_and_block_metrics():
    d = grid_distances((2, 3))
    assert d[0, 5].item() == pytest.approx(math.hypot(1, 2)) and d.diagonal().abs().max() == 0
    rows = [{"block": b, "head": h, "distance": b + h, "entropy": 1.0, "mass": 0.5, "hit": h}
            for b in range(2) for h in range(2)]
    assert block_metrics(rows) == {"attn_distance/b0": 0.5, "attn_entropy/b0": 1.0, "attn_mass/b0": 0.5,
                                   "attn_hit/b0": 0.5, "attn_distance/b1": 1.5, "attn_entropy/b1": 1.0,
                                   "attn_mass/b1": 0.5, "attn_hit/b1": 0.5}


@pytest.mark.slow
@pytest.mark.parametrize("init", ["impulse", "torch_default"])
def test_on_a_model_the_mass_and_hit_are_fidelitys(init):
    """On the nano model with a class token, the mass and hit per block and head are exactly what
    fidelity.py measures on the same images (impulse: its solved taps; torch_default: the cover
    taps of its reference), and every measure is in range."""
    from structinit import attention, fidelity
    from structinit.config import ModelConfig
    from structinit.train import build_model
    from structinit.inits import InitConfig

    model, result = build_model(ModelConfig("vit_nano_patch2_8", pos_embed="learn", global_pool="token"),
                                InitConfig(name=init, pe_scale=18.0), seed=0, img_size=8, in_chans=1, num_classes=10)
    images = torch.randn(16, 1, 8, 8)
    rows = attention.measure(model, result, images)
    assert len(rows) == len(model.blocks) * model.blocks[0].attn.num_heads
    expected = fidelity.data_fidelity(model, result, images)
    for r in rows:
        head = expected[r["block"]]["heads"][r["head"]]
        assert r["mass"] == pytest.approx(head["target_mass"], abs=6e-5)
        assert r["hit"] == pytest.approx(head["argmax_hit"], abs=6e-5)
        assert 0 <= r["distance"] <= math.hypot(3, 3) and 0 <= r["entropy"] <= math.log(17) + 1e-9


class Saved:
    """A checkpoint as the loop's Session gives it back: a copy of the folder it wrote."""

    def __init__(self, folder):
        import shutil
        import tempfile

        self.folder = tempfile.mkdtemp()
        shutil.copytree(folder, self.folder, dirs_exist_ok=True)

    @classmethod
    def from_directory(cls, folder):
        return cls(folder)

    def as_directory(self):
        import contextlib

        return contextlib.nullcontext(self.folder)


@pytest.mark.slow
def test_the_loop_records_attention_at_the_init_the_checkpoints_and_the_end(tmp_path, monkeypatch):
    """The real loop, in this process with a local Session and a real MLflow store (SQLite): 3
    epochs with a checkpoint every 2 measure at 0 (the init), 2 and 3 epochs trained; MLflow holds
    each block's means at those steps, each checkpoint every row so far, the Parquet table the
    last one's. A restart from the checkpoint at 2 measures again only at 3 and logs nothing twice."""
    import types

    import ray

    from mlflow.tracking import MlflowClient

    from structinit import attention, results, tracking, train
    from structinit.checkpoint import read_attention
    from structinit.config import make

    # no Ray cluster here: the node the loop tags its run with is this process's
    monkeypatch.setattr(ray, "get_runtime_context", lambda: types.SimpleNamespace(get_node_id=lambda: "here"))
    cfg = make("digits", recipe_overrides=dict(epochs=3, warmup_epochs=0, batch_size=64), fraction=0.3,
               model_overrides=dict(embed_dim=32, depth=2, pos_embed="learn", global_pool="token"), checkpoint_every=2)
    uri = "sqlite:///" + str(tmp_path / "mlflow.db")
    run = tracking.start_run(uri, "attention", "loop", cfg.flat(), {})
    reports = []
    session = train.Session(train.Context(), lambda: None, lambda m, checkpoint=None: reports.append((m, checkpoint)),
                            Saved)
    threads = torch.get_num_threads()
    try:
        train.train_loop({"trial": cfg, "tracking": run, "data": None}, session)
        saved = [c for _, c in reports if c is not None]
        assert [read_attention(c.folder)[-1]["epoch"] for c in saved] == [2, 3]
        again = []
        train.train_loop({"trial": cfg, "tracking": run, "data": None}, train.Session(
            train.Context(), lambda: saved[0], lambda m, checkpoint=None: again.append((m, checkpoint)), Saved))
    finally:
        torch.set_num_threads(threads)  # the loop sets cpus_per_worker for its process

    heads = 2 * 4  # depth 2, 4 heads
    rows = read_attention(saved[-1].folder)
    assert [r["epoch"] for r in rows] == [0] * heads + [2] * heads + [3] * heads
    assert read_attention(saved[0].folder) == rows[:2 * heads]  # the checkpoint at 2 held what was measured by then
    assert [m["epoch"] for m, _ in again] == [2] and read_attention(again[0][1].folder) == rows  # replayed exactly
    for key in ("attn_distance/b0", "attn_entropy/b1", "attn_mass/b0", "attn_hit/b1"):
        logged = sorted((m.step, m.value) for m in MlflowClient(uri).get_metric_history(run.run_id, key))
        assert [step for step, _ in logged] == [0, 2, 3]  # once each, the restart logged nothing again
        assert [v for _, v in logged] == pytest.approx(
            [attention.block_metrics([r for r in rows if r["epoch"] == e])[key] for e in (0, 2, 3)])
    assert all(m["attention_seconds"] > 0 for m, _ in reports)  # epoch 0's holds the init's measure
    assert reports[1][0]["attention_seconds"] < reports[1][0]["eval_seconds"]

    base = {"study": "s", "execution": "x", "trial_id": "t0", "init": cfg.init.name, "seed": cfg.seed}
    results.write(str(tmp_path), "x", [], [], results.attention_rows(base, rows))
    table = results.load_attention(str(tmp_path))
    assert table.columns.tolist() == results.ATTENTION.names and len(table) == 3 * heads
    assert table.groupby("epoch").size().to_dict() == {0: heads, 2: heads, 3: heads}
    assert table[["block", "head"]].drop_duplicates().shape[0] == heads and (table["trial_id"] == "t0").all()


def fraction_study(fractions=(0.1, 1.0), seeds=(0, 1, 2)):
    """Synthetic (trials, attention) of a study across training fractions: impulse's final
    distance grows with the fraction, 0.9 (1 + 0.1 seed) patches more at 1.0 than at 0.1, and its
    tap mass falls; default's distance stays 2 everywhere. 2 blocks x 2 heads, measured at 0, 5, 10."""
    import json

    import pandas as pd

    trials, rows = [], []
    for fraction in fractions:
        params = json.dumps({"fraction": fraction})
        for init in ("impulse", "default"):
            for seed in seeds:
                trial_id = f"t{len(trials)}"
                trials.append(dict(status="TERMINATED", error=None, execution="e-1", trial_id=trial_id,
                                   config_key=params, params=params, init=init, seed=seed, fraction=fraction,
                                   final_test_top1=80.0 + seed, test_top1_at_best_val=80.0, best_val_top1=80.0))
                for epoch in (0, 5, 10):
                    grown = epoch / 10 * (0.2 + fraction * (1 + 0.1 * seed))
                    for block in (0, 1):
                        for head, tilt in ((0, -0.05), (1, 0.05)):  # heads average out
                            distance = 2.0 if init == "default" else 1 + 0.1 * seed + 0.5 * block + grown + tilt
                            rows.append(dict(study="s", execution="e-1", trial_id=trial_id, init=init, seed=seed,
                                             epoch=epoch, block=block, head=head, distance=distance, entropy=1.0,
                                             mass=0.9 - 0.4 * grown if init == "impulse" else 0.1, hit=0.5))
    return pd.DataFrame(trials), pd.DataFrame(rows)


def test_the_report_pairs_each_fraction_with_the_smallest_and_says_whether_impulse_reaches_further(tmp_path):
    """Per arm the distance at the init and the end (block 0, last block); per init each fraction
    against the smallest, seed by seed, with its CI by hand; the verdict line; the curves drawn."""
    from scipy import stats

    from structinit.report import attention_tables, markdown, plots, summarize
    from structinit.stats import arms

    trials, rows = fraction_study()
    _, summary, fractions = attention_tables(arms(trials), rows)
    imp = summary[(summary.init == "impulse") & summary.config.str.contains("fraction=0.1")].iloc[0]
    assert imp.n == 3 and imp.distance_b0_init_mean == pytest.approx(1.1)  # 1 + 0.1 * mean seed
    assert imp.distance_last_final_mean == pytest.approx(1.1 + 0.5 + 0.2 + 0.1 * 1.1)
    row = fractions[fractions.init == "impulse"].iloc[0]
    assert (row.fraction, row.against, row.n, row.test) == (1.0, 0.1, 3, "exact")
    for key in ("distance_all_final", "distance_b0_final", "distance_last_final"):
        assert getattr(row, f"{key}_mean") == pytest.approx(0.99)
        assert getattr(row, f"{key}_ci95") == pytest.approx(stats.t.ppf(0.975, 2) * 0.09 / math.sqrt(3))
    assert row.mass_all_final_mean == pytest.approx(-0.4 * 0.99) and row.p == pytest.approx(0.25)  # 2 / 2^3
    flat = fractions[fractions.init == "default"].iloc[0]
    assert flat.distance_all_final_mean == 0 and flat.p == 1.0

    table, paired = summarize(trials)
    text = markdown("s", table, paired, trials, attention=rows)
    assert "## Attention through training" in text and "## Attention across training fractions" in text
    assert "| default | (base) | 1 − 0.1 | 3 | 2.00 → 2.00 | 0.00 ± 0.00 |" in text
    assert ("impulse at fraction 1 against 0.1: with more data its attention reaches further (final mean distance "
            "over all blocks 1.66 → 2.65 patches" in text and "keeps less on its initial taps (mass -0.40" in text)
    assert "- default: timm's unstructured init" in text  # what impulse - default is measured against
    assert "## Attention" not in markdown("s", table, paired, trials)  # no rows, no sections
    made = plots(str(tmp_path), trials, rows.iloc[:0], paired, {}, ("attention",), rows)
    assert [p.rsplit("/", 1)[1] for p in made] == ["attention.png"]
