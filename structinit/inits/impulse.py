"""Structured impulse init (Zheng, Li, Lucey 2024; follow-up 2025).

Each head's W_q, W_k are solved so that on a pseudo input P (N x D), with P~ = LayerNorm(P)
as the block's own norm1 computes it, softmax(s P~ W_q W_k^T P~^T) is the shift matrix H of one
impulse filter (`targets.py`): every query puts `target_mass` of its attention on the key one
filter tap away.

The pseudo input is fixed (`pe`, noise, sums), or real images (`data`, `pe+data`): a seeded batch of
training images, solved layer by layer on the tokens each block actually sees (block 0: the
patch embedding plus PE; block b: what the already initialised blocks 0..b-1 make of them), so
that the structure holds on the images, not only on the pseudo input.
"""
from __future__ import annotations

import copy
import dataclasses
import warnings

import torch
from timm.layers import Attention
from timm.models.vision_transformer import VisionTransformer

from structinit.inits import InitConfig, InitResult, register, uses_data
from structinit.inits.default import base_init, reference, scale_pos_embed
from structinit.inits.mimetic import mimetic_factors, mimetic_vo
from structinit.inits.qkv import copy_qk, read_qk, set_qk, zero_qk_bias
from structinit.inits.targets import cover_offsets, mass_and_hit, random_offsets, target_maps
from structinit.models import (attention_inputs, attention_probs, grid_size, image_tokens, patch_pos_embed,
                               pseudo_tokens)


def pseudo_input(model: VisionTransformer, kind: str) -> torch.Tensor:
    """(N, D): `pe` the model's patch position embedding as training will start from it (after
    the PE scale), `uniform` U(-1, 1) (v1's U), `gaussian` TN(0, 1/2) cut at +-2 (v1's G), or a
    sum such as `pe+gaussian` (v1's A, B). For `pe+data`, its fixed part: the PE."""
    n, d = patch_pos_embed(model).shape
    parts = kind.split("+")
    x = torch.zeros(n, d)
    if "pe" in parts:
        x += patch_pos_embed(model).detach().float()
    if "uniform" in parts:
        x += torch.empty(n, d).uniform_(-1, 1)
    if "gaussian" in parts:
        x += torch.nn.init.trunc_normal_(torch.empty(n, d), std=0.5 ** 0.5, a=-2, b=2)
    return x


def solve_closed_form(pt: torch.Tensor, maps: torch.Tensor, head_dim: int, rank_rtol: float, damping: float,
                      weights: torch.Tensor | None = None):
    """Damped least squares over a stack of inputs in their common subspace, then best rank d.

    pt (n, N, D): the normalised patch tokens P~_i of n inputs (n = 1: one pseudo matrix; a batch
    of images for `data`), `weights` w_i (default 1). One B = W_q W_k^T must serve every input, so
    stack them, X = [w_1^1/2 P~_1; ...; w_n^1/2 P~_n] (nN x D), and ask the stacked logits X B X^T
    for T = blockdiag(w_1 H, ..., w_n H): every input's own logits for the target map H (heads x N
    x N, a shift matrix for an impulse) with weight w_i^2 in the squared error, and 0 for the
    logits between two inputs (they never meet in one softmax; asking 0 of them is what keeps
    the solve closed form). With X = U S V^T, cut at rank r = #{s_i >= rank_rtol * s_1}, the
    reachable logits are U C U^T with C = S V^T B V S; least squares gives
    C = U^T T U = sum_i w_i U_i^T H U_i (U_i: input i's rows of U) and B = V S^-1 C S^-1 V^T.
    For n = 1 that is the single-matrix solve; for a batch, B = (X^T X)^-1 (sum_i w_i X_i^T H X_i)
    (X^T X)^-1: the pooled second moment whitens, so a direction along which the images vary
    without carrying position (their content) gets small logits, not large ones.
    A direction the inputs carry weakly (small s_i) would be inverted and amplified by 1/s_i in
    any input that deviates along it (4,000x on the digits' sin-cos PE: huge W_q, W_k, one-hot
    attention on the wrong key). Tikhonov damping replaces S^-1 U^T by S (S^2 + lambda^2)^-1 U^T,
    lambda = `damping` * s_1, i.e. C = F U^T T U F with F = S^2 / (S^2 + lambda^2): directions with
    s_i << lambda are faded out instead of inverted, and no input direction is amplified by more
    than 1/(2 lambda) (at most 1/(2 damping) times the top direction's gain 1/s_1).
    The best rank-k approximation (k = min(d, r)) C_k = A S_c B^T gives
    W_q = V S^-1 A S_c^1/2, W_k = V S^-1 B S_c^1/2. The logit scale is left to `calibrate`.
    S and V come from the eigendecomposition (float64) of the D x D Gram X^T X, formed in float32
    like U and H U_i (the products linear in n; H U_i is the only one quadratic in N).
    Returns (W_q, W_k), each (heads, D, k), and {rank r, cond s_1/s_r of the kept subspace,
    gain: the largest amplification of an input direction relative to the top one}."""
    n = pt.shape[0]
    w = torch.ones(n, dtype=torch.float64) if weights is None else weights.double()
    x = pt.float() * w.sqrt().float()[:, None, None]
    flat = x.reshape(-1, x.shape[-1])
    ev, v = torch.linalg.eigh((flat.T @ flat).double())
    s, v = ev.flip(0).clamp(min=0).sqrt(), v.flip(1)
    r = int((s >= rank_rtol * s[0]).sum())
    s, v = s[:r], v[:, :r]
    u = (x @ v.float()) / s.float()  # (n, N, r): U_i
    lam2 = (damping * s[0]) ** 2
    fade = s ** 2 / (s ** 2 + lam2)
    back = v / s
    hu = maps.float() @ u[:, None]  # (n, heads, N, r): H U_i
    c = torch.einsum("inr,ihns->hrs", u * w.float()[:, None, None], hu).double()
    c = fade[:, None] * c * fade
    a, sc, bh = torch.linalg.svd(c)
    k = min(head_dim, r)
    root = sc[:, :k].sqrt().unsqueeze(1)
    info = {"rank": r, "cond": float(s[0] / s[-1]), "gain": float((s[0] * s / (s ** 2 + lam2)).max())}
    return back @ (a[..., :k] * root), back @ (bh[:, :k].transpose(1, 2) * root), info


def solve_gradient(pt: torch.Tensor, maps: torch.Tensor, head_dim: int, scale: float, steps: int, lr: float):
    """v1: Adam (lr, `steps`) on mean((softmax(s P~ Q K P~^T) - H)^2) over heads x N x N, with
    Q (D x d), K (d x D) from U(-1, 1) sqrt(1/(d heads)); every 100 steps every column of Q and K
    is rescaled to the mean column norm of the initial Q, which caps the logits (v1's ~0.27 mass)."""
    heads = maps.shape[0]
    dim = pt.shape[1]
    bound = (1.0 / (head_dim * heads)) ** 0.5
    q = (torch.rand(heads, dim, head_dim) * 2 - 1) * bound
    k = (torch.rand(heads, head_dim, dim) * 2 - 1) * bound
    norm = q.norm(dim=1).mean()
    target = maps.float()
    q.requires_grad_(True)
    k.requires_grad_(True)
    opt = torch.optim.Adam([q, k], lr=lr)
    with torch.enable_grad():
        for step in range(1, steps + 1):
            probs = (scale * (pt @ q) @ (k @ pt.T)).softmax(-1)
            loss = (probs - target).pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step % 100 == 0:
                with torch.no_grad():
                    q.mul_(norm / q.norm(dim=1, keepdim=True))
                    k.mul_(norm / k.norm(dim=1, keepdim=True))
    return q.detach(), k.detach().transpose(1, 2)


def calibrate(logits: torch.Tensor, fixed: torch.Tensor, support: torch.Tensor, mass: float) -> torch.Tensor:
    """Per head the factor t with mean mass on the intended keys (`support`, heads x Nq x Nk) of
    softmax(t * logits + fixed) = `mass`, the mean over queries and over any leading batch dims of
    `logits` (..., heads, Nq, Nk): over the images, for a data-aware solve.
    A scan over log t finds where the mass first reaches `mass` (it rises with t while the
    argmax is on the target, and falls once wrong argmaxes dominate), then bisection refines it.
    Where `mass` is out of reach, t maximises the mass instead (the caller warns)."""
    logits, fixed = logits.float(), fixed.float()
    keys = support.expand(logits.shape).float()  # rows without a target are all 0: they add nothing
    rows = keys.flatten(0, -4).any(-1).sum((0, 2)).clamp(min=1)  # per head, the queries with a target

    def reached(log_t: torch.Tensor) -> torch.Tensor:  # mass_and_hit's mass, with the support's counts made once
        probs = (log_t.exp()[:, None, None] * logits + fixed).softmax(-1)
        return (probs * keys).flatten(0, -4).sum((0, 2, 3)) / rows

    heads = logits.shape[-3]
    grid = torch.arange(-10.0, 14.5, 1.0)
    scan = torch.stack([reached(torch.full((heads,), g)) for g in grid], 1)  # (heads, len(grid))
    above = scan >= mass
    first = torch.where(above.any(1), above.float().argmax(1), scan.argmax(1))
    lo, hi = grid[(first - 1).clamp(min=0)], grid[first]
    ok = above.any(1) & (first > 0)
    for _ in range(14):  # the bracket is one unit of log t wide: 2^-14 after
        mid = (lo + hi) / 2
        low = reached(mid) < mass
        lo, hi = torch.where(ok & low, mid, lo), torch.where(ok & ~low, mid, hi)
    return hi.exp().double()


def hybrid(maps: torch.Tensor, pt: torch.Tensor, attn: Attention, cfg: InitConfig) -> torch.Tensor:
    """(1 - r) H + r X on every row with a target, r = `mix_ratio`: X is row-normalised U(0, 1)
    noise (`mix="noise"`), or the map mimetic init draws on this pseudo input (`mix="mimetic"`),
    softmax(s P~ (alpha_qk Z + beta_qk I) P~^T) with a fresh Z per head."""
    if cfg.mix is None or cfg.mix_ratio == 0:
        return maps
    if cfg.mix == "noise":
        other = torch.rand(maps.shape, dtype=torch.float64)
        other = other / other.sum(-1, keepdim=True)
    else:
        dim, ptd = pt.shape[1], pt.double()
        other = torch.stack([(attn.scale * ptd @ mimetic_factors(dim, dim, cfg.alpha_qk, cfg.beta_qk)[2].double()
                              @ ptd.T).softmax(-1) for _ in range(maps.shape[0])])
    rows = maps.sum(-1, keepdim=True) > 0
    return torch.where(rows, (1 - cfg.mix_ratio) * maps + cfg.mix_ratio * other, maps)


def calibration_queries(n: int, queries: int, rows: int = 2048) -> torch.Tensor:
    """(n, m) the query positions each of n inputs calibrates on: all of them while n * queries <=
    rows, else m = ceil(rows / n) per input, consecutive runs of one fixed permutation (a generator
    of its own: the init's RNG stream is untouched), so that over the batch every position is
    used about equally often. The mean mass over 2,048 (image, query) rows spread so is within
    about 0.01 of the batch's."""
    if n * queries <= rows:
        return torch.arange(queries).expand(n, queries)
    m = -(-rows // n)
    order = torch.randperm(queries, generator=torch.Generator().manual_seed(0))
    return order[(torch.arange(n)[:, None] * m + torch.arange(m)) % queries]


def solve_block(attn: Attention, pt: torch.Tensor, maps: torch.Tensor, support: torch.Tensor,
                cfg: InitConfig, keys: torch.Tensor | None = None, weights: torch.Tensor | None = None,
                measured: slice = slice(None)) -> dict:
    """Solve and write one block's W_q, W_k for target maps (heads x N x N) on the normalised patch
    tokens `pt` (n, N, D) of n inputs (`weights`: theirs in the solve), calibrating the mean mass
    on the intended keys `support` over the inputs `measured` picks (and, over a batch, the queries
    `calibration_queries` picks: the mass and hit noted are theirs). `keys` (n, T, D): the
    normalised tokens with the prefix (class, register) tokens first, which the model also attends
    to (default `pt`: no prefix). q/k biases are zeroed (the solve assumes none).
    Head dims the closed form leaves unused (k < d) keep the base init, so they can still learn."""
    if cfg.solver == "closed_form":
        wq, wk, info = solve_closed_form(pt, maps, attn.head_dim, cfg.rank_rtol, cfg.damping, weights)
    else:
        wq, wk = solve_gradient(pt[0], maps, attn.head_dim, attn.scale, cfg.solver_steps, cfg.solver_lr)
        wq, wk, info = wq.double(), wk.double(), {"rank": None, "cond": None, "gain": None}
    used = wq.shape[-1]
    fill_q, fill_k = (w[..., used:] for w in read_qk(attn))
    queries = pt[measured]
    rows = calibration_queries(*queries.shape[:2])  # (n, m)
    queries = queries.gather(1, rows[..., None].expand(-1, -1, queries.shape[-1])).float()[:, None]
    keys = (pt if keys is None else keys)[measured].float()[:, None]
    support = support[:, rows].transpose(0, 1)  # (n, heads, m, N)
    support = torch.nn.functional.pad(support, (keys.shape[-2] - support.shape[-1], 0))  # prefix: never intended

    def logits(a, b):  # (n, heads, N, T) as the block computes them
        return attn.scale * (queries @ a.float()) @ (keys @ b.float()).transpose(-1, -2)

    solved = logits(wq, wk)
    fixed = logits(fill_q, fill_k) if fill_q.shape[-1] else torch.zeros(())
    scale = torch.ones(maps.shape[0], dtype=torch.float64)
    if cfg.target_mass is not None:
        scale = calibrate(solved, fixed, support, cfg.target_mass)
        root = scale.sqrt()[:, None, None]
        wq, wk = wq * root, wk * root
    elif cfg.factor_norm is not None:  # the follow-up: each head's factors to Frobenius norm `factor_norm`
        nq, nk = wq.flatten(1).norm(dim=1), wk.flatten(1).norm(dim=1)
        scale = cfg.factor_norm ** 2 / (nq * nk)
        wq, wk = wq * (cfg.factor_norm / nq)[:, None, None], wk * (cfg.factor_norm / nk)[:, None, None]
    wq, wk = torch.cat([wq, fill_q], -1), torch.cat([wk, fill_k], -1)
    mass, hit = mass_and_hit((scale.float()[:, None, None] * solved + fixed).softmax(-1), support)
    set_qk(attn, wq.float(), wk.float())
    zero_qk_bias(attn)
    return {**info, "logit_scale": scale.tolist(), "mass": mass.tolist(), "argmax_hit": hit.tolist(),
            "wq_norm": wq.flatten(1).norm(dim=1).tolist(), "wk_norm": wk.flatten(1).norm(dim=1).tolist()}


def data_stream(model: VisionTransformer, kind: str, images: torch.Tensor | None):
    """What a data-aware solve propagates through the blocks: (tokens (m, T, D), weights (m,),
    the rows that are images), or None for a fixed pseudo input. `data`: the images' tokens;
    `pe+data`: the PE's pseudo tokens in front, weighted sqrt(n) so that its squared error
    counts as much as the n images' together."""
    if not uses_data(kind):
        return None
    x = image_tokens(model, images.to(model.blocks[0].norm1.weight))
    n = x.shape[0]
    if kind == "data":
        return x, torch.ones(n, dtype=torch.float64), slice(None)
    pe = pseudo_tokens(model, pseudo_input(model, "pe"))
    return torch.cat([pe, x]), torch.tensor([n ** 0.5] + [1.0] * n, dtype=torch.float64), slice(1, None)


def pe_masses(model: VisionTransformer, cfg: InitConfig, images: torch.Tensor) -> list[float]:
    """Per block, the mean attention mass on the target (over heads) that this init solved on `pe`
    instead (with cfg's sharpness: target_mass or factor_norm) realises on `images` in a forward
    pass, as fidelity.data_fidelity measures it (init_mass_data's measure: the patch queries' mass
    on their targets, the class token a key that is never one). Solved on a copy of the model as
    `apply_init` left it, in a forked RNG: the copy is the `pe` arm of the same seed, bit for bit,
    and the caller's own draws are untouched."""
    twin = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():  # the pe arm warns in its own runs
        warnings.simplefilter("ignore")
        result = impulse(twin, dataclasses.replace(cfg, pseudo_input="pe", match_pe_mass=False))
    x = images.to(twin.blocks[0].norm1.weight)
    prefix, masses = twin.num_prefix_tokens, []
    for block, tokens, support in zip(twin.blocks, attention_inputs(twin, lambda: twin(x)), result.supports):
        probs = attention_probs(block.attn, tokens)[..., prefix:, :]
        mass, _ = mass_and_hit(probs, torch.nn.functional.pad(support, (prefix, 0)))
        masses.append(min(max(float(mass.mean()), 1e-3), 0.999))
    return masses


def unstructured(model: VisionTransformer, cfg: InitConfig) -> None:
    """Everything `impulse` writes besides the solved W_q, W_k (and its zeroed q/k biases): the base
    init, the PE scale (`pe_scale`), and V and the output projection as `value_proj` says (the
    base's, or mimetic's W_v W_o = alpha_vo Z - beta_vo I, drawn here in the same RNG order).
    `pe_scaled` is exactly this, so impulse - pe_scaled differs in the Q/K solve alone."""
    base_init(model, cfg.base)
    scale_pos_embed(model, cfg)
    if cfg.value_proj == "mimetic":  # before the solves: a layer-wise solve sees what V, proj make of its input
        mimetic_vo(model, cfg)


def pe_scaled_reads(cfg: InitConfig) -> tuple[str, ...]:
    """What `unstructured` reads: the base, the PE scale, V/proj's kind and its mimetic alpha, beta."""
    return ("base", "pe_scale", "value_proj", *(("alpha_vo", "beta_vo") if cfg.value_proj == "mimetic" else ()))


@register("pe_scaled", reads=pe_scaled_reads)
def pe_scaled(model: VisionTransformer, cfg: InitConfig) -> InitResult:
    """Control for impulse: what impulse writes besides its Q/K solve (`unstructured`: the base init,
    the PE scaled exactly as impulse scales it, s = 18 on a learned PE, and impulse's V/proj where
    `value_proj` is mimetic), with W_q, W_k left at the base init. On small data a larger PE alone
    gives much of the gain credited to structure; impulse - pe_scaled is the solved Q/K alone, and
    pe_scaled - base the PE scale (plus the mimetic V/proj where value_proj is mimetic)."""
    unstructured(model, cfg)
    return reference(model, cfg)


def impulse_reads(cfg: InitConfig) -> tuple[str, ...]:
    """The fields impulse reads: its solve's, and those of the options it takes (the gradient
    solver's steps, a data pseudo input's batch, mimetic V/proj, a blob, a mix)."""
    fields = ["base", "filter_size", "offsets", "pseudo_input", "solver", "target_mass", "factor_norm", "qk",
              "value_proj", "pe_scale", "target_shape", "mix"]
    fields += ["rank_rtol", "damping"] if cfg.solver == "closed_form" else ["solver_steps", "solver_lr"]
    fields += ["data_images", "match_pe_mass"] if uses_data(cfg.pseudo_input) else []
    fields += ["alpha_vo", "beta_vo"] if cfg.value_proj == "mimetic" else []
    fields += ["blob", "blob_sigma"] if cfg.target_shape != "impulse" else []
    fields += ["mix_ratio"] if cfg.mix else []
    fields += ["alpha_qk", "beta_qk"] if cfg.mix == "mimetic" else []
    return tuple(fields)




@register("impulse", reads=impulse_reads)
def impulse(model: VisionTransformer, cfg: InitConfig, images: torch.Tensor | None = None) -> InitResult:
    """Impulse init. Base init; PE <- pe_scale * PE; per block (or once, `qk="shared"`, v1) each
    head gets an offset of the f x f window (`cover`: all f^2 taps before repeats; `random`: v1's
    draw) and W_q, W_k solved on the pseudo input (`closed_form` or v1's `gradient`) so that
    softmax(s P~ W_q W_k^T P~^T) puts `target_mass` on the tapped key of every query with one.
    Zero padding: queries whose tap leaves the grid get no target (their rows are pushed to
    uniform attention). A class token is left out of the solve: it is not in the pseudo input,
    so it is neither a query nor a target there; in the model it is one more key.
    `data` / `pe+data` (`images`, closed form): block b is solved on its own normalised input
    tokens over the batch (`solve_closed_form`), after blocks 0..b-1 are initialised and have
    transformed them, and its mass is calibrated over the images with the class token among the
    keys, as the model's forward computes it. With `match_pe_mass`, block b's mass is the one the
    same init solved on `pe` realises in block b on these images (`pe_masses`), not target_mass:
    a data - pe comparison then differs in what the solve fits, not in how sharp it is on images.
    V and the output projection keep the base init, or are mimetic (follow-up): W_v W_o = 0.4 Z - 0.4 I.
    Open questions of the paper: `target_shape` box / gaussian spreads each head's target over a
    `blob` x `blob` window around its tap (the mass is then calibrated on the whole blob), and
    `mix` / `mix_ratio` blends the target with noise or a mimetic map before the solve (the mass is
    still calibrated on the structured target's keys)."""
    matched = pe_masses(model, cfg, images) if cfg.match_pe_mass and uses_data(cfg.pseudo_input) else None
    unstructured(model, cfg)  # base, PE scale, V/proj: what pe_scaled writes too
    was_training = model.training
    model.eval()  # the stream passes blocks as a forward in eval mode does (no dropout, no drop path)
    stream = data_stream(model, cfg.pseudo_input, images)
    prefix = model.num_prefix_tokens
    heads = model.blocks[0].attn.num_heads
    grid = grid_size(model)
    offsets, inputs, supports, notes = [], [], [], []
    for index, block in enumerate(model.blocks):
        if cfg.qk == "shared" and index > 0:  # v1: block 0's Q, K copied into every block
            copy_qk(model.blocks[0].attn, block.attn)
            offs, p, support, note = offsets[0], inputs[0], supports[0], notes[0]
        else:
            draw = cover_offsets if cfg.offsets == "cover" else random_offsets
            offs = draw(cfg.filter_size, heads)
            structured = target_maps(grid, offs, cfg.target_shape, cfg.blob, cfg.blob_sigma)
            support = structured > 0
            if stream is None:
                p = pseudo_input(model, cfg.pseudo_input)
                pt = block.norm1(p)[None]
                note = solve_block(block.attn, pt, hybrid(structured, pt[0], block.attn, cfg), support, cfg)
            else:
                tokens, weights, rows = stream
                keys = block.norm1(tokens)
                pt = keys[:, prefix:]
                p = tokens[rows][0, prefix:]  # the first image's patch tokens: what the plots draw
                solve = cfg if matched is None else dataclasses.replace(cfg, target_mass=matched[index],
                                                                        factor_norm=None)
                note = solve_block(block.attn, pt, hybrid(structured, pt[rows][0], block.attn, cfg), support, solve,
                                   keys=keys, weights=weights, measured=rows)
                note["target_mass"] = solve.target_mass
        if stream is not None and cfg.qk == "per_block" and index < len(model.blocks) - 1:
            stream = (block(stream[0]), *stream[1:])
        offsets.append(offs)
        inputs.append(p)
        supports.append(support)
        notes.append(note)
    model.train(was_training)

    def target(note):  # what the block was calibrated to (a matched block: the pe solve's mass there)
        return note.get("target_mass", cfg.target_mass)

    missed = {i: [round(m, 3) for m in note["mass"]] for i, note in enumerate(notes)
              if target(note) is not None and max(abs(m - target(note)) for m in note["mass"]) > 0.05}
    if missed:
        where = "the images" if stream is not None else "the pseudo input"
        asked = f"{target(notes[min(missed)]):.3g}" + (" (the pe solve's there)" if matched else "")
        warnings.warn(f"target_mass={asked} not reached on {where} in {len(missed)} of {len(notes)} blocks "
                      f"(per head, block {min(missed)}: {missed[min(missed)]}): it cannot express these offsets more "
                      "sharply there; each head gets the largest mass it reaches", stacklevel=3)
    return InitResult(offsets=offsets, pseudo_inputs=inputs, supports=supports,
                      notes={"blocks": notes, **({"pe_masses": matched} if matched else {})},
                      images=None if stream is None else images)
