"""The statistics a study's report rests on, as plain functions: of numbers (the 95 % t-interval
of a mean over seeds, the paired test of per-seed differences: exact sign flips for few seeds or
equal differences, else the t-test; Holm's step-down adjustment for the many comparisons one
study makes at once), of a study's trials (its arms and their pairs; the decomposition of a gain
into what pe_scaled adds, PE scale and V/proj, and Q/K structure; the impulse setting each heads x
dim cell's validation accuracy picks; the attention through training per arm, and across training
fractions), and of its configurations (a group's declared objective, which the search and the
grouped scheduler read; parameter importance over one objective value per configuration).
report.py builds its tables from these and presents them."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
from scipy import stats

from structinit import results
from structinit.attention import MEASURES
from structinit.config import label
from structinit.declarations import parse_objective
from structinit.rank import conditions


def finite(values) -> np.ndarray:
    """The values that are numbers (None and NaN dropped), as floats."""
    return np.asarray([x for x in values if x is not None and not math.isnan(x)], dtype=float)


# Below this many seeds the paired t-test is not used: its p rests on the differences being normal,
# which nothing checks at n = 2..5, and an exact test exists that assumes only that the null makes
# each difference's sign a fair coin. The exact sign-flip test enumerates the 2^n sign vectors, so
# its p is a multiple of 1/2^n: at n = 5 the smallest two-sided p is 2/32 = 0.0625 (n = 3, 4:
# 0.25, 0.125), and with fewer than 6 seeds no difference reaches p < 0.05, adjusted or not.
EXACT_BELOW = 6
# Differences whose spread is at most this fraction of their largest magnitude count as equal
# (zero variance): per-seed differences of accuracies that moved by the same number of test
# images differ in the last bits (100*814/900 - 100*804/900 != 100*813/900 - 100*803/900), and a
# t-test on them gives t ~ 1e14, p ~ 1e-72. Test sets of up to 10^6 images move in steps far above it.
EQUAL_RTOL = 1e-9
# permutation_test holds every sign vector at once (2^n x n floats): up to n = 16 that is 8 MiB.
# Equal non-zero differences at larger n have their exact p in closed form (see _sign_flip_p).
ENUMERATE_UP_TO = 16


def ci95(values) -> tuple[float, float, float, int]:
    """mean, std, half-width of the 95 % t-interval, n (NaN where n < 2):
    mean ± t_{0.975, n-1} · s / √n, s the sample std (ddof 1), from scipy.stats.t.interval
    (half-width 0 where every value is equal: scipy's interval is NaN at scale 0)."""
    v = finite(values)
    n = len(v)
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    if n == 1:
        return float(v[0]), math.nan, math.nan, 1
    mean, std = float(v.mean()), float(v.std(ddof=1))
    if std == 0:
        return mean, 0.0, 0.0, n
    low, high = stats.t.interval(0.95, n - 1, loc=mean, scale=std / math.sqrt(n))
    return mean, std, float(high - low) / 2, n


def _sign_flip_p(d: np.ndarray) -> float:
    """Two-sided p of the exact paired sign-flip permutation test of mean(d) = 0: under the null each
    difference's sign is a fair coin, so the 2^n sign vectors are equally likely and p is the share
    of them whose |mean| is at least the observed (scipy.stats.permutation_test with one sample and
    permutation_type="samples" flips signs; with n_resamples >= 2^n it enumerates them all and is
    exact; its two-sided p, 2·min of the one-sided, equals that share since the null is symmetric).
    Equal non-zero differences beyond ENUMERATE_UP_TO: only the all-+ and all-− vectors reach the
    observed |mean|, p = 2/2^n."""
    n = len(d)
    if n > ENUMERATE_UP_TO:
        return 2.0 / 2 ** n
    res = stats.permutation_test((d,), np.mean, permutation_type="samples", n_resamples=2 ** n,
                                 alternative="two-sided", vectorized=True, axis=-1)
    return float(res.pvalue)


def paired_test(diffs) -> tuple[float, str]:
    """(two-sided p, the test that gave it) for per-seed differences d_1..d_n (a − b, same
    configuration and seed) under the null mean 0:
    - "none", p NaN: n < 2, nothing to test;
    - "exact": the exact sign-flip permutation test (_sign_flip_p) where n < EXACT_BELOW or the
      differences are equal (zero variance, up to EQUAL_RTOL), where the t-test's p means nothing
      (at zero variance t is ±∞ and its p 0). All-zero differences (arms that agree seed for seed,
      e.g. an init bit-identical to another) give p = 1; equal non-zero ones 2/2^n, never 0;
    - "t": the paired t-test otherwise, scipy.stats.ttest_1samp(d, 0) (= ttest_rel(a, b))."""
    d = finite(diffs)
    n = len(d)
    if n < 2:
        return math.nan, "none"
    top = float(np.abs(d).max())
    if top == 0:
        return 1.0, "exact"
    if n < EXACT_BELOW or float(np.ptp(d)) <= EQUAL_RTOL * top:
        return _sign_flip_p(d), "exact"
    return float(stats.ttest_1samp(d, 0.0).pvalue), "t"


def paired_p(diffs) -> float:
    """The two-sided p of paired_test (exact sign-flip test below EXACT_BELOW seeds or at zero
    variance, paired t-test otherwise); NaN where n < 2."""
    return paired_test(diffs)[0]


def holm(p) -> np.ndarray:
    """Holm's step-down adjustment of m p-values, in their input order. With p_(1) ≤ … ≤ p_(m)
    sorted ascending, p̃_(i) = min(1, max_{j ≤ i} (m − j + 1) · p_(j)). Rejecting every p̃ ≤ α
    keeps the chance of any false rejection among the m at most α, whatever their dependence
    (they share seeds and arms); it is uniformly less conservative than Bonferroni (m · p).
    NaN entries (a comparison of one seed) are no comparisons: they stay NaN and do not count in m.
    scipy.stats has no Holm adjustment (false_discovery_control is Benjamini-Hochberg/-Yekutieli)."""
    p = np.asarray(p, dtype=float)
    out = np.full(p.shape, math.nan)
    tested = np.flatnonzero(~np.isnan(p))
    m = len(tested)
    if m:
        order = tested[np.argsort(p[tested], kind="stable")]
        out[order] = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    return out


# ---- a study's trials ------------------------------------------------------------------------

BASELINES = ("torch_default", "default")  # the unstructured init a decomposition starts from: the first that ran


def whole_rank(k: float) -> int:
    """A mean measured rank as the integer the conditions use (its ceiling)."""
    return math.ceil(k - 1e-9)


def vit_conditions(trial, k: float) -> tuple[bool, bool] | None:
    """(h >= f^2, D/h >= k) of a ViT configuration, k its measured embedding rank (None for a
    ConvMixer or without a measured k)."""
    if pd.isna(k) or pd.isna(trial.embed_dim) or pd.isna(trial.num_heads) or not pd.isna(trial.kernel_size):
        return None
    met = conditions(trial.embed_dim, whole_rank(k), trial.filter_size, trial.num_heads)
    return met["h_ge_f2"], met["head_dim_ge_k"]


def varies_width(done: pd.DataFrame) -> bool:
    """Whether a study's finished ViT trials vary embed_dim or num_heads (a heads-vs-dim grid)."""
    vit = done[done["num_heads"].notna()]
    return len(vit) > 0 and (vit["embed_dim"].nunique() > 1 or vit["num_heads"].nunique() > 1)


def finished(trials: pd.DataFrame) -> pd.DataFrame:
    """The TERMINATED trials with every schema column (NaN where absent); rows of tables written
    before trials had identities stand for themselves (identity: the trial, base: the proposal)."""
    done = trials[trials["status"] == "TERMINATED"].reindex(columns=[*trials.columns, *(
        c for c in results.TRIALS.names if c not in trials.columns)])
    return keyed(done)


def keyed(trials: pd.DataFrame) -> pd.DataFrame:
    """`trials` with identity, base and setting keys where an older table lacks them: each trial its
    own model, its proposal its base, the proposal's init fields its setting."""
    t = trials.reindex(columns=[*trials.columns, *(c for c in results.TRIALS.names if c not in trials.columns)])
    asked = t["params"].map(lambda p: json.dumps({k.partition(".")[2]: v for k, v in json.loads(p or "{}").items()
                                                  if k.startswith("init.")}, sort_keys=True))
    return t.assign(identity=t["identity"].fillna(t["trial_id"]), base_key=t["base_key"].fillna(t["config_key"]),
                    setting_key=t["setting_key"].fillna(t["config_key"]), setting=t["setting"].fillna(asked))


def _latest_trained_last(g: pd.DataFrame) -> pd.DataFrame:
    """Rows ordered so that the last of each group is the trained one of the latest execution."""
    return g.assign(_trained=g["reused_from"].isna()).sort_values(["_trained", "execution"], kind="stable")


def arms(trials: pd.DataFrame) -> pd.DataFrame:
    """The finished trials as arms: an arm is one init at one setting on one base (`base_key`:
    everything but the init and the seed), each seed once. Requested settings whose trials are
    the same models seed by seed (equal identities: bit-identical initial weights) are one arm.
    Adds `arm` (its key), `requested` (the settings asked for, JSON, '|'-joined), `label` (the
    init fields that vary in the study, as asked, and for impulse the mass it realised on real
    images), `base_label` (the searched fields that are not the init's), `config` (both) and
    `configs` (the config_keys of the proposals whose trials are the arm's models, space-joined:
    an init that does not read a searched field is one arm over every proposal of its base)."""
    every = finished(trials)
    done = _latest_trained_last(every).drop_duplicates(["base_key", "init", "setting_key", "seed"], keep="last")
    signature = {key: tuple(sorted(zip(g["seed"], g["identity"])))
                 for key, g in done.groupby(["base_key", "init", "setting_key"], sort=True)}
    first = {}
    for key, sig in signature.items():  # the first setting of the same models names the arm
        first.setdefault((key[0], key[1], sig), key[2])
    arm_of = {(b, i, k): f"{b}/{i}/{first[(b, i, sig)]}" for (b, i, k), sig in signature.items()}
    done["arm"] = [arm_of[key] for key in zip(done["base_key"], done["init"], done["setting_key"])]
    proposals: dict[str, set] = {}
    for b, i, k, c in zip(every["base_key"], every["init"], every["setting_key"], every["config_key"]):
        proposals.setdefault(arm_of[(b, i, k)], set()).add(c)
    requested = done.groupby("arm")["setting"].agg(lambda v: "|".join(sorted(set(v))))
    done = _latest_trained_last(done).drop_duplicates(["arm", "seed"], keep="last").drop(columns="_trained")
    done["requested"] = done["arm"].map(requested)
    done["configs"] = done["arm"].map(lambda a: " ".join(sorted(proposals[a])))
    varying = {init: _varying(g["requested"]) for init, g in done.groupby("init")}
    labels = {arm: _label(g, varying[g["init"].iloc[0]]) for arm, g in done.groupby("arm")}
    done["label"] = done["arm"].map(labels)
    done["base_label"] = done["params"].map(lambda p: label(json.dumps(
        {k: v for k, v in json.loads(p or "{}").items() if not k.startswith("init.")})))
    done["config"] = [" ".join(x for x in (b if b != "(base)" else "", s) if x) or "(base)"
                      for b, s in zip(done["base_label"], done["label"])]
    return done.sort_index()


def _settings(requested: str) -> list[dict]:
    return [json.loads(s) for s in requested.split("|")]


def _varying(requested: pd.Series) -> list[str]:
    """The fields of an init's settings that take more than one value in a study."""
    values: dict[str, set] = {}
    for text in requested:
        for s in _settings(text):
            for k, v in s.items():
                values.setdefault(k, set()).add(json.dumps(v))
    return sorted(k for k, v in values.items() if len(v) > 1)


def _text(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _label(g: pd.DataFrame, varying: list[str]) -> str:
    """An arm as a reader names it: each varying field as asked ('|' where settings coincide), and
    for an arm with a target mass, the mass it realised on held-out real images, marked out of
    reach where its solves fell short of the mass asked on their own inputs (`init_mass_solved`,
    each block's solve on what it was solved on; tables from before it: the forward pass on the
    pseudo input, which later blocks see transformed)."""
    settings = _settings(g["requested"].iloc[0])
    parts = [f"{k}=" + "|".join(dict.fromkeys(_text(s.get(k)) for s in settings)) for k in varying]
    asked = [s["target_mass"] for s in settings if s.get("target_mass") is not None]
    realised = g["init_mass_data"].mean()
    reached = g["init_mass_solved"].mean() if g["init_mass_solved"].notna().any() else g["init_mass_pseudo"].mean()
    if parts and asked and not pd.isna(realised):
        short = not pd.isna(reached) and max(asked) > reached + REACH_TOLERANCE
        parts.append(f"→ mass {realised:.2f}" + (" (asked mass out of reach)" if short else ""))
    return " ".join(parts)


REACH_TOLERANCE = 0.02  # a solve whose mass on its pseudo input is this far under the asked one fell short


def compatible(a: str, b: str) -> bool:
    """Whether two arms' settings agree on every field both inits read (e.g. impulse and pe_scaled
    on pe_scale; impulse and mimetic on the base and V/proj): only such arms are paired."""
    sa, sb = _settings(a)[0], _settings(b)[0]
    return all(sa[k] == sb[k] for k in sa.keys() & sb.keys())


def by_seed(arm: pd.DataFrame) -> pd.Series:
    """One arm's final test top-1 by seed (the pairing every difference uses)."""
    return arm.set_index("seed")["final_test_top1"]


def comparisons(done: pd.DataFrame, pairs: tuple, reference: dict | None = None):
    """The paired comparisons a study's arms allow, as (config, pair, arm a, arm b): per base,
    each declared (init a, init b) between compatible arms, and where the study names a
    `reference` setting (dotted init fields, e.g. {"init.pseudo_input": "pe"}) every other arm of
    an init against that init's reference arm. `config` names arm a; b shares its base."""
    out = []
    wanted = {k.partition(".")[2]: v for k, v in (reference or {}).items()}
    for _, g in done.groupby("base_key", sort=True):
        by_init = {init: [a for _, a in arms_.groupby("arm", sort=True)] for init, arms_ in g.groupby("init")}
        for a, b in dict.fromkeys(tuple(pair) for pair in pairs):  # a pair declared twice: one row
            for x in by_init.get(a, []):
                out += [(x["config"].iloc[0], f"{a} - {b}", x, y) for y in by_init.get(b, [])
                        if compatible(x["requested"].iloc[0], y["requested"].iloc[0])]
        for init, group in by_init.items() if wanted else ():
            refs = [x for x in group if all(_settings(x["requested"].iloc[0])[0].get(k) == v
                                            for k, v in wanted.items())]
            for ref in refs[:1]:
                out += [(x["config"].iloc[0], f"{init} {x['label'].iloc[0]} - {ref['label'].iloc[0]}", x, ref)
                        for x in group if x["arm"].iloc[0] != ref["arm"].iloc[0]]
    return out


def lost_seeds(trials: pd.DataFrame, a: pd.DataFrame, b: pd.DataFrame) -> int:
    """Seeds a comparison of arms `a`, `b` ran (in any status) but cannot pair: one side failed
    or was stopped early."""
    t = keyed(trials)
    seeds = set()
    for arm in (a, b):
        mine = t[(t["base_key"] == arm["base_key"].iloc[0]) & (t["init"] == arm["init"].iloc[0])
                 & t["setting"].isin(arm["requested"].iloc[0].split("|"))]
        seeds |= set(mine["seed"])
    return len(seeds) - len((by_seed(a) - by_seed(b)).dropna())


def baseline(inits) -> str | None:
    """The unstructured init a decomposition starts from: torch_default where it ran, else default."""
    return next((b for b in BASELINES if b in inits), None)


def control_parts(g: pd.DataFrame) -> tuple[str | None, str, str]:
    """(value_proj, what pe_scaled − baseline is, what impulse − pe_scaled is) in one configuration's
    trials. pe_scaled writes what impulse writes but its Q/K solve: the PE scale, and V/proj as
    value_proj says. So pe_scaled − baseline is "PE scale" where pe_scaled's recorded
    init_pe_scale is not 1 (unrecorded counts as scaled), "+ mimetic V/proj" where value_proj is
    mimetic, and impulse − pe_scaled is the Q/K structure. value_proj None: not recorded (tables
    from before its column, when pe_scaled kept the base's V/proj) or differing between the arms:
    where the V/proj went is then named as unknown."""
    arms = g[g["init"].isin(["impulse", "pe_scaled"])]
    recorded = set(arms["value_proj"].dropna())
    value_proj = recorded.pop() if len(recorded) == 1 else None
    scales = g.loc[g["init"] == "pe_scaled", "init_pe_scale"]
    parts = [] if len(scales) and (scales == 1).all() else ["PE scale"]
    if value_proj is None:
        return None, " + ".join(parts) or "nothing", "structure (value_proj unrecorded: Q/K, maybe V/proj)"
    if value_proj != "default":
        parts.append(f"{value_proj} V/proj")
    return value_proj, " + ".join(parts) or "nothing (pe_scaled is the baseline)", "Q/K structure"


def decomposition(done: pd.DataFrame, paired: pd.DataFrame) -> pd.DataFrame:
    """Per impulse arm whose base also ran a compatible pe_scaled arm and a baseline b
    (`baseline`), the gain split seed by seed: impulse − b = (pe_scaled − b) + (impulse −
    pe_scaled), what pe_scaled adds to b (the PE scale, and impulse's V/proj where value_proj is
    mimetic) plus what the solved Q/K add on top of it; `part` names each by what differs in its
    trials (`control_parts`), `pair` is the stable key. Means and 95 % CIs (ci95) over the seeds
    where all three finished, so the parts' means sum to the total's exactly (their CIs do not
    add); `p_holm` and `n_paired` are the paired table's row of the same pair (its seeds, its Holm
    family), NaN and 0 where the study did not declare that pair. `done`: `arms`' rows."""
    rows = []
    for _, g in done.groupby("base_key", sort=True):
        base = baseline(set(g["init"]))
        for _, imp in g[g["init"] == "impulse"].groupby("arm", sort=True):
            control = [c for _, c in g[g["init"] == "pe_scaled"].groupby("arm", sort=True)
                       if compatible(imp["requested"].iloc[0], c["requested"].iloc[0])]
            if base is None or not control:
                continue
            config = imp["config"].iloc[0]
            common = pd.DataFrame({"impulse": by_seed(imp), "pe_scaled": by_seed(control[0]),
                                   base: by_seed(g[g["init"] == base])}).dropna()
            value_proj, added, structure = control_parts(pd.concat([imp, control[0]]))
            for part, a, b, named in ((added, "pe_scaled", base, control[0]["config"].iloc[0]),
                                      (structure, "impulse", "pe_scaled", config), ("total", "impulse", base, config)):
                m, s, h, n = ci95(common[a] - common[b])
                row = paired[(paired["config"] == named) & (paired["pair"] == f"{a} - {b}")]  # its arm a's row
                rows.append({"config": config, "baseline": base, "value_proj": value_proj, "part": part,
                             "pair": f"{a} - {b}", "mean": m, "ci95": h, "n": n,
                             "p_holm": row["p_holm"].iloc[0] if len(row) else math.nan,
                             "n_paired": int(row["n"].iloc[0]) if len(row) else 0})
    return pd.DataFrame(rows, columns=["config", "baseline", "value_proj", "part", "pair", "mean", "ci95", "n",
                                       "p_holm", "n_paired"])


def per_cell(done: pd.DataFrame, table: pd.DataFrame, paired: pd.DataFrame) -> pd.DataFrame:
    """Per (embed_dim, num_heads) cell of a ViT study that varies them (`varies_width`; else an
    empty table): the width conditions h >= f² and D/h >= k (`vit_conditions`, `theory`, on the
    picked impulse arm's measured k) and the impulse arm (its `label`: the settings asked and the
    mass realised; settings that gave the same weights are one arm) with the highest mean best
    validation top-1 over seeds (ties: the first by key); the test set never selects. For the
    pick: its final test top-1 mean ± 95 % CI; `config` names its rows in the paired table (its
    differences impulse − b). `done`: `arms`' rows."""
    out = []
    if varies_width(done):
        impulse = table[table["init"] == "impulse"].set_index("arm")
        for (dim, heads), g in done[(done["init"] == "impulse") & done["num_heads"].notna()].groupby(
                ["embed_dim", "num_heads"], sort=True):
            rows = impulse.loc[sorted(g["arm"].unique())]
            scored = rows[rows["best_val_top1_mean"].notna()]
            if not len(scored):
                continue
            best = scored["best_val_top1_mean"].idxmax()
            r, trial = rows.loc[best], g[g["arm"] == best].iloc[0]
            met = vit_conditions(trial, r["init_rank_k"]) or (None, None)
            out.append({"embed_dim": int(dim), "num_heads": int(heads), "h_ge_f2": met[0], "head_dim_ge_k": met[1],
                        "theory": r["theory"], "config": r["config"], "setting": trial["label"],
                        "settings": len(rows), "best_val_top1_mean": r["best_val_top1_mean"],
                        "final_test_top1_mean": r["final_test_top1_mean"],
                        "final_test_top1_ci95": r["final_test_top1_ci95"], "n": r["n"]})
    return pd.DataFrame(out, columns=["embed_dim", "num_heads", "h_ge_f2", "head_dim_ge_k", "theory", "config",
                                      "setting", "settings", "best_val_top1_mean", "final_test_top1_mean",
                                      "final_test_top1_ci95", "n"])


# ---- attention through training (attention.py) ---------------------------------------------

SCOPES = ("b0", "last", "all")  # block 0, the model's last block, the mean over every block


def attention_curves(done: pd.DataFrame, attention: pd.DataFrame) -> pd.DataFrame:
    """Per arm, seed, measured epoch and block of `done` (`arms`' rows): each measure's mean over
    the block's heads, from the attention rows (results.ATTENTION) of the trial that trained the
    model (a reused trial's: the one it reused); `last` marks the model's last block."""
    columns = ["arm", "init", "config", "base_label", "label", "seed", "fraction", "requested", "params", "epoch",
               "block", "last", *MEASURES]
    if not len(done) or not len(attention):
        return pd.DataFrame(columns=columns)
    blocks = attention.groupby(["trial_id", "epoch", "block"], as_index=False)[list(MEASURES)].mean()
    blocks["last"] = blocks["block"] == blocks.groupby("trial_id")["block"].transform("max")
    source = done.assign(source=done["reused_from"].fillna(done["trial_id"]))
    return source.merge(blocks, left_on="source", right_on="trial_id")[columns]


def attention_by_seed(curves: pd.DataFrame) -> pd.DataFrame:
    """One row per arm and seed (`attention_curves`' rows): each measure at the init (`_init`, 0
    epochs trained) and at the end (`_final`, the trial's last measured epoch), in block 0
    (`_b0_`), the last block (`_last_`) and over all blocks (`_all_`), e.g. `distance_b0_final`."""
    rows = []
    for (arm, seed), g in curves.groupby(["arm", "seed"], sort=True):
        row = {"arm": arm, "seed": seed, **{c: g[c].iloc[0] for c in ("init", "config", "base_label", "label",
                                                                       "fraction", "requested", "params")}}
        for at, epoch in (("init", 0), ("final", g["epoch"].max())):
            e = g[g["epoch"] == epoch]
            for m in MEASURES:
                for scope, values in zip(SCOPES, (e.loc[e["block"] == 0, m], e.loc[e["last"], m], e[m])):
                    row[f"{m}_{scope}_{at}"] = values.mean() if len(values) else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def attention_summary(seeds: pd.DataFrame) -> pd.DataFrame:
    """Per arm (`attention_by_seed`'s rows): the mean and 95 % CI half-width over seeds of every
    measure at the init and at the end, in block 0, the last block and over all blocks
    (`distance_b0_final_mean`, `..._ci95`), and n, the seeds."""
    rows = []
    keys = [f"{m}_{s}_{at}" for m in MEASURES for s in SCOPES for at in ("init", "final")]
    for arm, g in seeds.groupby("arm", sort=True) if len(seeds) else ():
        row = {"config": g["config"].iloc[0], "init": g["init"].iloc[0], "arm": arm, "n": len(g)}
        for key in keys:
            m, _, h, _ = ci95(g[key])
            row.update({f"{key}_mean": m, f"{key}_ci95": h})
        rows.append(row)
    out = pd.DataFrame(rows, columns=["config", "init", "arm", "n",
                                      *(f"{k}_{x}" for k in keys for x in ("mean", "ci95"))])
    return out.sort_values(["config", "init"], kind="stable").reset_index(drop=True)


ACROSS = ("distance_all_final", "distance_b0_final", "distance_last_final", "mass_all_final")  # what moves


def across_fractions(seeds: pd.DataFrame) -> pd.DataFrame:
    """For a study whose arms differ in `fraction` (a new kind of pairing, across bases): per init,
    setting and the rest of the configuration, each fraction against the smallest, seed by seed
    (same init, setting and seed; the bases differ in the fraction only, so the initial weights are
    the same, but for a data-aware impulse's, solved on its own split's images): the differences of
    the final mean attention distance over all blocks, in block 0 and in the last block, and of the
    final mass on the init's taps over all blocks (`ACROSS`: `<key>_mean`, `<key>_ci95`); `p` and
    `test` (paired_test) of the all-block distance, `p_holm` Holm's over these rows; the all-block
    distance at the init and at the end at both fractions.
    `seeds`: `attention_by_seed`'s rows. Empty where no fraction varies."""
    columns = ["init", "setting", "fraction", "against", "n", *(f"{k}_{x}" for k in ACROSS for x in ("mean", "ci95")),
               "p", "test", "distance_init", "distance_final", "against_distance_final"]
    if not len(seeds) or seeds["fraction"].nunique() < 2:
        return pd.DataFrame(columns=[*columns, "p_holm"])
    rest = seeds["params"].map(lambda p: json.dumps({k: v for k, v in json.loads(p or "{}").items()
                                                     if k != "fraction"}, sort_keys=True))
    rows = []
    for (init, _, other), g in seeds.assign(rest=rest).groupby(["init", "requested", "rest"], sort=True):
        fractions = sorted(g["fraction"].unique())
        low = g[g["fraction"] == fractions[0]].set_index("seed")
        for fraction in fractions[1:]:
            high = g[g["fraction"] == fraction].set_index("seed")
            row = {"init": init, "setting": label(other), "fraction": fraction, "against": fractions[0],
                   "distance_init": high["distance_all_init"].mean(),
                   "distance_final": high["distance_all_final"].mean(),
                   "against_distance_final": low["distance_all_final"].mean()}
            for key in ACROSS:
                m, _, h, _ = ci95((high[key] - low[key]).dropna())
                row.update({f"{key}_mean": m, f"{key}_ci95": h})
            diff = (high["distance_all_final"] - low["distance_all_final"]).dropna()
            row["n"] = len(diff)
            row["p"], row["test"] = paired_test(diff)
            rows.append(row)
    out = pd.DataFrame(rows, columns=columns)
    out["p_holm"] = holm(out["p"])
    return out


# ---- configurations: a group's objective, and parameter importance over configurations --------


def group_objective(objective: str, values: dict) -> float:
    """What a configuration scores, from its group's members' values ({(init, seed): value}, all
    at one epoch): `mean` over every member; `arm:X` over X's seeds; `gap:A-B` the mean over the
    seeds where both ran of A − B, seed by seed (the paired difference the report shows). Missing
    values (None, NaN: a member that failed) do not count; NaN where nothing does."""
    kind, inits = parse_objective(objective)
    v = {k: float(x) for k, x in values.items() if x is not None and not math.isnan(x)}
    if kind == "mean":
        picked = list(v.values())
    elif kind == "arm":
        picked = [x for (init, _), x in v.items() if init == inits[0]]
    else:
        a, b = inits
        picked = [x - v[(b, seed)] for (init, seed), x in v.items() if init == a and (b, seed) in v]
    return float(np.mean(picked)) if picked else math.nan


FINAL = {"val_top1": "final_val_top1"}  # a study metric's column in the trials table (its last epoch's value)


def final_values(trials: pd.DataFrame, history: pd.DataFrame, metric: str) -> pd.Series:
    """Each trial's value of `metric` at its last epoch (what the search received from it), by row:
    from the trials table where it has the column, else from the last epoch in `history` (a
    trial that reused another's result: that trial's)."""
    if metric in FINAL:
        return trials[FINAL[metric]].astype(float)
    last = history.sort_values("epoch").groupby("trial_id")[metric].last() if metric in history else pd.Series()
    source = trials["reused_from"].fillna(trials["trial_id"]) if "reused_from" in trials else trials["trial_id"]
    return source.map(last).astype(float)


def _whole(x) -> int | None:
    return None if pd.isna(x) else int(x)


def configurations(trials: pd.DataFrame, history: pd.DataFrame, objective: str, metric: str,
                   at: int | None = None) -> pd.DataFrame:
    """One row per configuration (`config_key`: one proposal's params, in any execution): its
    `params` (JSON), `status` ("finished": no member stopped early and one at least finished;
    "failed": none finished; "stopped": its group was, at
    `stopped_at` epochs -- under a per-trial scheduler, `stopped` of its trials were, the latest
    there), `reached` (the epochs it reached: its last, or `stopped_at`), `members` (the (init,
    seed) that count) and `objective`: the declared objective (group_objective) over the members'
    last values of `metric` -- for a stopped group their values at `stopped_at`, where it was
    judged; with `at`, every configuration's values after `at` epochs (from `history`; a member
    that reused a finished trial's result: that trial's epochs). Each (init, seed) once: the
    latest trained."""
    t = trials.reindex(columns=[*trials.columns, *(c for c in results.TRIALS.names if c not in trials.columns)])
    t = t.assign(last_value=final_values(t, history, metric))
    curve = (history.set_index(["trial_id", "epoch"])[metric].to_dict() if len(history) and metric in history
             else {})
    rows = []
    for key, g in t.groupby("config_key", sort=True):
        stopped = g[g["status"] == results.STOPPED]
        stopped_at = _whole(stopped["epochs_done"].max()) if len(stopped) else None
        epochs = at or stopped_at
        ran = g[g["status"].isin(["TERMINATED", results.STOPPED] if epochs else ["TERMINATED"])]
        members = _latest_trained_last(ran).drop_duplicates(["init", "seed"], keep="last")
        if epochs is None:
            values = {(r.init, int(r.seed)): r.last_value for r in members.itertuples()}
        else:
            source = members["reused_from"].fillna(members["trial_id"])
            values = {(r.init, int(r.seed)): curve.get((s, epochs - 1)) for r, s in zip(members.itertuples(), source)}
        finished = stopped_at is None
        status = "stopped" if not finished else "finished" if (g["status"] == "TERMINATED").any() else "failed"
        rows.append({"config_key": key, "params": g["params"].iloc[0], "status": status,
                     "stopped_at": stopped_at, "stopped": len(stopped),
                     "reached": _whole(g["epochs_done"].max()) if finished else stopped_at, "members": len(values),
                     "objective": group_objective(objective, values)})
    return pd.DataFrame(rows, columns=["config_key", "params", "status", "stopped_at", "stopped", "reached",
                                       "members", "objective"])


IMPORTANCE_MIN = 3  # configurations below which no importance is computed


def importances(trials: pd.DataFrame, history: pd.DataFrame, objective: str, metric: str) -> dict[str, tuple]:
    """Parameter importance (`importance`) over configurations, by what it is computed on, as
    (configurations, {param: importance}): "final", the finished configurations at their last
    epoch; where some were stopped early, also "at N epochs", every configuration at the epochs
    all of them reached (the first rung), one observation each at one fidelity -- under early
    stopping the finished ones are few, and only the search's survivors. A view without enough
    configurations is left out."""
    views = {"final": configurations(trials, history, objective, metric)}
    if (views["final"]["status"] == "stopped").any() and views["final"]["reached"].notna().all():
        at = int(views["final"]["reached"].min())
        views[f"at {at} epochs"] = configurations(trials, history, objective, metric, at=at).assign(status="finished")
    out = {}
    for name, configs in views.items():
        found = importance(configs)
        if found:
            out[name] = (int(((configs["status"] == "finished") & configs["objective"].notna()).sum()), found)
    return out


def importance(configs: pd.DataFrame, seed: int = 0) -> dict[str, float]:
    """Parameter importance (fANOVA, Optuna's FanovaImportanceEvaluator, seeded) over one
    observation per finished configuration: its declared objective (`configurations`), not
    single trials. Each param on the range the configurations cover (numbers; log where all are
    positive and span at least 100x) or as categories; a param some configurations lack (a
    conditional one) is left out, as Optuna leaves it out. {} with fewer than IMPORTANCE_MIN
    configurations, or where no param varies or the objectives do not."""
    import optuna

    done = configs[(configs["status"] == "finished") & configs["objective"].notna()]
    if len(done) < IMPORTANCE_MIN or done["objective"].nunique() < 2:
        return {}
    params = [json.loads(p) for p in done["params"]]
    distributions = {}
    for name in sorted(set.intersection(*(set(p) for p in params))):
        values = [p[name] for p in params]
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        if numbers and min(values) < max(values):
            lo, hi = float(min(values)), float(max(values))
            distributions[name] = optuna.distributions.FloatDistribution(lo, hi, log=lo > 0 and hi / lo >= 100)
        elif not numbers and len({json.dumps(v) for v in values}) > 1:
            distributions[name] = optuna.distributions.CategoricalDistribution(
                sorted({json.dumps(v) for v in values}))
    if not distributions:
        return {}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study()
    for p, value in zip(params, done["objective"]):
        study.add_trial(optuna.trial.create_trial(
            params={k: float(p[k]) if isinstance(d, optuna.distributions.FloatDistribution) else json.dumps(p[k])
                    for k, d in distributions.items()}, distributions=distributions, value=float(value)))
    found = optuna.importance.get_param_importances(study, evaluator=optuna.importance.FanovaImportanceEvaluator(
        seed=seed))
    return {k: float(v) for k, v in found.items()}
