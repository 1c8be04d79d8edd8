"""Structured impulse init (Zheng, Li, Lucey 2024; follow-up 2025).

Each head's W_q, W_k are solved so that on a pseudo input P (N x D), with P~ = LayerNorm(P)
as the block's own norm1 computes it, softmax(s P~ W_q W_k^T P~^T) is the shift matrix H of one
impulse filter (`targets.py`): every query puts `target_mass` of its attention on the key one
filter tap away.
"""
from __future__ import annotations

import warnings

import torch
from timm.layers import Attention
from timm.models.vision_transformer import VisionTransformer

from structinit.inits import InitConfig, InitResult, register
from structinit.inits.default import base_init, scale_pos_embed
from structinit.inits.mimetic import mimetic_factors, mimetic_vo, set_qk
from structinit.inits.targets import cover_offsets, mass_and_hit, random_offsets, target_maps
from structinit.models import grid_size, patch_pos_embed


def pseudo_input(model: VisionTransformer, kind: str) -> torch.Tensor:
    """(N, D): `pe` the model's patch position embedding as training will start from it (after
    the PE scale), `uniform` U(-1, 1) (v1's U), `gaussian` TN(0, 1/2) cut at +-2 (v1's G), or a
    sum such as `pe+gaussian` (v1's A, B)."""
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


def solve_closed_form(pt: torch.Tensor, maps: torch.Tensor, head_dim: int, rank_rtol: float, damping: float):
    """Damped least squares in the pseudo input's subspace, then best rank d.

    P~ = U S V^T, cut at rank r = #{s_i >= rank_rtol * s_1} (the numerical null space). The
    logits P~ B P~^T reachable by B = W_q W_k^T are U C U^T with C = S V^T B V S. Plain least
    squares, C = U^T H U for the target map H (heads x N x N; a shift matrix for an impulse), gives
    B = V S^-1 C S^-1 V^T: a direction the pseudo input carries weakly (small s_i) is inverted, so
    an input that deviates from the pseudo input along it -- every real image does -- is amplified
    by 1/s_i (4,000x on the digits' sin-cos PE: huge W_q, W_k, one-hot attention on the wrong key).
    Tikhonov damping replaces the pseudo-inverse V S^-1 U^T by V S (S^2 + lambda^2)^-1 U^T,
    lambda = `damping` * s_1, i.e. C = F U^T H U F with F = S^2 / (S^2 + lambda^2): directions with
    s_i << lambda are faded out instead of inverted, and no input direction is amplified by more
    than 1/(2 lambda) (at most 1/(2 damping) times the top direction's gain 1/s_1).
    The best rank-k approximation (k = min(d, r)) C_k = A S_c B^T gives
    W_q = V S^-1 A S_c^1/2, W_k = V S^-1 B S_c^1/2. The logit scale is left to `calibrate`.
    Returns (W_q, W_k), each (heads, D, k), and {rank r, cond s_1/s_r of the kept subspace,
    gain: the largest amplification of an input direction relative to the top one}."""
    u, s, vh = torch.linalg.svd(pt.double(), full_matrices=False)
    r = int((s >= rank_rtol * s[0]).sum())
    u, s, vh = u[:, :r], s[:r], vh[:r]
    lam2 = (damping * s[0]) ** 2
    fade = s ** 2 / (s ** 2 + lam2)
    back = vh.T / s
    c = fade[:, None] * (u.T @ maps @ u) * fade
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
    """Per head the factor t with mean mass on the intended keys (`support`) of
    softmax(t * logits + fixed) = `mass`.
    A scan over log t finds where the mass first reaches `mass` (it rises with t while the
    argmax is on the target, and falls once wrong argmaxes dominate), then bisection refines it.
    Where `mass` is out of reach, t maximises the mass instead (the caller warns)."""
    logits, fixed = logits.float(), fixed.float()

    def reached(log_t: torch.Tensor) -> torch.Tensor:
        return mass_and_hit((log_t.exp()[:, None, None] * logits + fixed).softmax(-1), support)[0]

    heads = logits.shape[0]
    grid = torch.arange(-10.0, 14.5, 1.0)
    scan = torch.stack([reached(torch.full((heads,), g)) for g in grid], 1)  # (heads, len(grid))
    above = scan >= mass
    first = torch.where(above.any(1), above.float().argmax(1), scan.argmax(1))
    lo, hi = grid[(first - 1).clamp(min=0)], grid[first]
    ok = above.any(1) & (first > 0)
    for _ in range(20):
        mid = (lo + hi) / 2
        low = reached(mid) < mass
        lo, hi = torch.where(ok & low, mid, lo), torch.where(ok & ~low, mid, hi)
    return hi.exp().double()


def head_weights(attn: Attention, rows: slice) -> torch.Tensor:
    """(heads, D, d) per-head maps stored in the qkv rows `rows` (query: 0, key: 1)."""
    w = attn.qkv.weight[rows]
    return w.reshape(attn.num_heads, attn.head_dim, -1).transpose(1, 2).double()


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


def solve_block(attn: Attention, pt: torch.Tensor, maps: torch.Tensor, support: torch.Tensor,
                cfg: InitConfig) -> dict:
    """Solve and write one block's W_q, W_k for target maps (heads x N x N), calibrating the mass
    on the intended keys `support`; q/k biases are zeroed (the solve assumes none).
    Head dims the closed form leaves unused (k < d) keep the base init, so they can still learn."""
    inner = attn.num_heads * attn.head_dim
    if cfg.solver == "closed_form":
        wq, wk, info = solve_closed_form(pt, maps, attn.head_dim, cfg.rank_rtol, cfg.damping)
    else:
        wq, wk = solve_gradient(pt, maps, attn.head_dim, attn.scale, cfg.solver_steps, cfg.solver_lr)
        wq, wk, info = wq.double(), wk.double(), {"rank": None, "cond": None, "gain": None}
    used = wq.shape[-1]
    fill_q = head_weights(attn, slice(0, inner))[..., used:]
    fill_k = head_weights(attn, slice(inner, 2 * inner))[..., used:]
    ptd = pt.double()

    def logits(a, b):
        return attn.scale * (ptd @ a) @ (ptd @ b).transpose(1, 2)

    scale = torch.ones(maps.shape[0], dtype=torch.float64)
    if cfg.target_mass is not None:
        scale = calibrate(logits(wq, wk), logits(fill_q, fill_k), support, cfg.target_mass)
        root = scale.sqrt()[:, None, None]
        wq, wk = wq * root, wk * root
    elif cfg.factor_norm is not None:  # the follow-up: each head's factors to Frobenius norm `factor_norm`
        nq, nk = wq.flatten(1).norm(dim=1), wk.flatten(1).norm(dim=1)
        scale = cfg.factor_norm ** 2 / (nq * nk)
        wq, wk = wq * (cfg.factor_norm / nq)[:, None, None], wk * (cfg.factor_norm / nk)[:, None, None]
    wq, wk = torch.cat([wq, fill_q], -1), torch.cat([wk, fill_k], -1)
    mass, hit = mass_and_hit(logits(wq, wk).softmax(-1), support)
    if cfg.target_mass is not None and (mass - cfg.target_mass).abs().max() > 0.05:
        warnings.warn(f"target_mass={cfg.target_mass} not reached on the pseudo input (per head: "
                      f"{[round(m, 3) for m in mass.tolist()]}): it cannot express these offsets more sharply",
                      stacklevel=4)
    set_qk(attn, wq.float(), wk.float())
    if attn.qkv.bias is not None:
        attn.qkv.bias[:2 * inner] = 0
    return {**info, "logit_scale": scale.tolist(), "mass": mass.tolist(), "argmax_hit": hit.tolist(),
            "wq_norm": wq.flatten(1).norm(dim=1).tolist(), "wk_norm": wk.flatten(1).norm(dim=1).tolist()}


@register("impulse")
def impulse(model: VisionTransformer, cfg: InitConfig) -> InitResult:
    """Impulse init. Base init; PE <- pe_scale * PE; per block (or once, `qk="shared"`, v1) each
    head gets an offset of the f x f window (`cover`: all f^2 taps before repeats; `random`: v1's
    draw) and W_q, W_k solved on the pseudo input (`closed_form` or v1's `gradient`) so that
    softmax(s P~ W_q W_k^T P~^T) puts `target_mass` on the tapped key of every query with one.
    Zero padding: queries whose tap leaves the grid get no target (their rows are pushed to
    uniform attention). A class token is left out of the solve: it is not in the pseudo input,
    so it is neither a query nor a target there; in the model it is one more key.
    V and the output projection keep the base init, or are mimetic (follow-up): W_v W_o = 0.4 Z - 0.4 I.
    Open questions of the paper: `target_shape` box / gaussian spreads each head's target over a
    `blob` x `blob` window around its tap (the mass is then calibrated on the whole blob), and
    `mix` / `mix_ratio` blends the target with noise or a mimetic map before the solve (the mass is
    still calibrated on the structured target's keys)."""
    base_init(model, cfg.base)
    scale_pos_embed(model, cfg)
    heads = model.blocks[0].attn.num_heads
    grid = grid_size(model)
    offsets, inputs, supports, notes = [], [], [], []
    inner = heads * model.blocks[0].attn.head_dim
    for index, block in enumerate(model.blocks):
        if cfg.qk == "shared" and index > 0:  # v1: block 0's Q, K copied into every block
            first = model.blocks[0].attn.qkv
            block.attn.qkv.weight[:2 * inner] = first.weight[:2 * inner]
            if first.bias is not None:
                block.attn.qkv.bias[:2 * inner] = first.bias[:2 * inner]
            offs, p, support, note = offsets[0], inputs[0], supports[0], notes[0]
        else:
            draw = cover_offsets if cfg.offsets == "cover" else random_offsets
            offs, p = draw(cfg.filter_size, heads), pseudo_input(model, cfg.pseudo_input)
            pt = block.norm1(p)
            structured = target_maps(grid, offs, cfg.target_shape, cfg.blob, cfg.blob_sigma)
            support = structured > 0
            note = solve_block(block.attn, pt, hybrid(structured, pt, block.attn, cfg), support, cfg)
        offsets.append(offs)
        inputs.append(p)
        supports.append(support)
        notes.append(note)
    if cfg.value_proj == "mimetic":
        mimetic_vo(model, cfg)
    return InitResult(offsets=offsets, pseudo_inputs=inputs, supports=supports, notes={"blocks": notes})
