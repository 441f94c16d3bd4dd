"""Fused neighbour search for KSG on CUDA (Triton): the k-th joint neighbour distance and the KSG counts of every
sample, each in one pass over all pairs that never writes a distance to memory.

The chunked brute force in ``knn`` streams (chunk, N) float64 distance arrays through memory several times
(marginal distances, joint distances, top-k, counts); here each program holds a block of rows, walks over all
columns in tiles, and keeps only its rows' k smallest distances (or its counts) in registers. The arithmetic is
the brute force's own (|x_i - x_j| per dimension, max over dimensions), so neighbours and counts are the same,
ties included. Max-norm only, up to ``MAX_DIMS`` dimensions per variable and k <= ``MAX_K``. Cost O(N^2 (D_x +
D_y)) operations, O(N) memory.
"""
from __future__ import annotations

import contextlib

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs without Triton: the brute force and the KD-tree still run
    triton = None

MAX_DIMS = 32
MAX_K = 16
_BLOCK_M, _BLOCK_N = 64, 64


def available(x: torch.Tensor, y: torch.Tensor, k: int) -> bool:
    """Whether ``ksg_counts_fused`` can run on these samples: CUDA tensors, Triton, small dims and k."""
    return (triton is not None and x.is_cuda and x.shape[1] <= MAX_DIMS and y.shape[1] <= MAX_DIMS
            and k <= MAX_K)


if triton is not None:
    @triton.jit
    def _max_norm(points, rows, cols, row_ok, col_ok, D: tl.constexpr):
        """(BLOCK_M, BLOCK_N) tile of max_d |p_id - p_jd| for points (N, D) row-major."""
        a = tl.load(points + rows * D, mask=row_ok, other=0.0)
        b = tl.load(points + cols * D, mask=col_ok, other=0.0)
        out = tl.abs(a[:, None] - b[None, :])
        for d in tl.static_range(1, D):
            a = tl.load(points + rows * D + d, mask=row_ok, other=0.0)
            b = tl.load(points + cols * D + d, mask=col_ok, other=0.0)
            out = tl.maximum(out, tl.abs(a[:, None] - b[None, :]))
        return out

    @triton.jit
    def _kth_joint_distance(x, y, eps, n, DX: tl.constexpr, DY: tl.constexpr, K: tl.constexpr, KP: tl.constexpr,
                            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        """eps_i = the k-th smallest max(|x_j - x_i|, |y_j - y_i|) over j != i (multiplicities kept)."""
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < n
        slots = tl.arange(0, KP)
        # the K smallest so far, unordered; padding slots hold -inf so that the row maximum is the current k-th
        best = tl.where(slots[None, :] < K, float("inf"), float("-inf")) + tl.zeros((BLOCK_M, KP), x.dtype.element_ty)
        for start in range(0, n, BLOCK_N):
            cols = start + tl.arange(0, BLOCK_N)
            col_ok = cols < n
            dz = tl.maximum(_max_norm(x, rows, cols, row_ok, col_ok, DX), _max_norm(y, rows, cols, row_ok, col_ok, DY))
            valid = row_ok[:, None] & col_ok[None, :] & (rows[:, None] != cols[None, :])
            dz = tl.where(valid, dz, float("inf"))
            if tl.sum((dz < tl.max(best, 1)[:, None]).to(tl.int32)) > 0:  # most tiles hold no new neighbour
                for _ in tl.static_range(K):  # move the tile's smallest into the K best, K times
                    smallest = tl.min(dz, 1)
                    worst = tl.max(best, 1)
                    take = (smallest < worst)[:, None] & (slots[None, :] == tl.argmax(best, 1)[:, None])
                    best = tl.where(take, smallest[:, None], best)
                    dz = tl.where(cols[None, :] == (start + tl.argmin(dz, 1))[:, None], float("inf"), dz)
        tl.store(eps + rows, tl.max(best, 1), mask=row_ok)

    @triton.jit
    def _row_counts(x, y, ez, ex, ey, out, n, DX: tl.constexpr, DY: tl.constexpr, MODE: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        """Per row i, over j != i, into out (5, n):
        MODE 0 (KSG-1): #{dz <= ez}, #{dx < ez}, #{dy < ez}, #{dx <= 0}, #{dy <= 0};
        MODE 1 (KSG-2 reach): #{dz <= ez}, max{dx : dz <= ez}, max{dy : dz <= ez} (0 if none);
        MODE 2 (KSG-2 counts): #{dx <= ex}, #{dy <= ey}."""
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < n
        e = tl.load(ez + rows, mask=row_ok, other=0.0)
        r_x = tl.load(ex + rows, mask=row_ok, other=0.0)
        r_y = tl.load(ey + rows, mask=row_ok, other=0.0)
        zero = tl.zeros((BLOCK_M,), out.dtype.element_ty)
        c0, c1, c2, c3, c4 = zero, zero, zero, zero, zero
        for start in range(0, n, BLOCK_N):
            cols = start + tl.arange(0, BLOCK_N)
            col_ok = cols < n
            valid = row_ok[:, None] & col_ok[None, :] & (rows[:, None] != cols[None, :])
            dx = _max_norm(x, rows, cols, row_ok, col_ok, DX)
            dy = _max_norm(y, rows, cols, row_ok, col_ok, DY)
            if MODE == 0:
                c0 += tl.sum((valid & (tl.maximum(dx, dy) <= e[:, None])).to(out.dtype.element_ty), 1)
                c1 += tl.sum((valid & (dx < e[:, None])).to(out.dtype.element_ty), 1)
                c2 += tl.sum((valid & (dy < e[:, None])).to(out.dtype.element_ty), 1)
                c3 += tl.sum((valid & (dx <= 0)).to(out.dtype.element_ty), 1)
                c4 += tl.sum((valid & (dy <= 0)).to(out.dtype.element_ty), 1)
            elif MODE == 1:
                near = valid & (tl.maximum(dx, dy) <= e[:, None])
                c0 += tl.sum(near.to(out.dtype.element_ty), 1)
                c1 = tl.maximum(c1, tl.max(tl.where(near, dx, 0.0), 1).to(out.dtype.element_ty))
                c2 = tl.maximum(c2, tl.max(tl.where(near, dy, 0.0), 1).to(out.dtype.element_ty))
            else:
                c1 += tl.sum((valid & (dx <= r_x[:, None])).to(out.dtype.element_ty), 1)
                c2 += tl.sum((valid & (dy <= r_y[:, None])).to(out.dtype.element_ty), 1)
        tl.store(out + rows, c0, mask=row_ok)
        tl.store(out + n + rows, c1, mask=row_ok)
        tl.store(out + 2 * n + rows, c2, mask=row_ok)
        tl.store(out + 3 * n + rows, c3, mask=row_ok)
        tl.store(out + 4 * n + rows, c4, mask=row_ok)


def ksg_counts_fused(x: torch.Tensor, y: torch.Tensor, k: int, variant: int):
    """KSG's per-sample (eps_i == 0, k_i, n_x, n_y), as ``knn._ksg_counts_brute`` gives them for the max-norm."""
    if triton is None:
        raise RuntimeError("ksg_counts_fused needs Triton (it comes with PyTorch's CUDA builds)")
    if not 1 <= k <= MAX_K or x.shape[1] > MAX_DIMS or y.shape[1] > MAX_DIMS:
        raise ValueError(f"ksg_counts_fused: k <= {MAX_K} and at most {MAX_DIMS} dimensions per variable, got k={k}, "
                         f"dims {x.shape[1]} and {y.shape[1]}")
    # Triton launches on the current CUDA device, not the tensors' (its CPU interpreter, in tests, has none)
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
        return _ksg_counts_on_device(x.contiguous(), y.contiguous(), k, variant)


def _ksg_counts_on_device(x: torch.Tensor, y: torch.Tensor, k: int, variant: int):
    n = x.shape[0]
    grid = (triton.cdiv(n, _BLOCK_M),)
    shape = dict(DX=x.shape[1], DY=y.shape[1], BLOCK_M=_BLOCK_M, BLOCK_N=_BLOCK_N)
    eps = torch.empty(n, dtype=x.dtype, device=x.device)
    _kth_joint_distance[grid](x, y, eps, n, K=k, KP=triton.next_power_of_2(k), **shape)
    out = torch.empty(5, n, dtype=torch.float64, device=x.device)  # counts in float64: exact below 2^53
    tied = eps == 0
    if variant == 1:  # strict counts where eps > 0; where eps = 0, k_i and the counts include the ties
        _row_counts[grid](x, y, eps, eps, eps, out, n, MODE=0, **shape)
        kk = torch.where(tied, out[0], float(k))
        nx, ny = torch.where(tied, out[3], out[1]), torch.where(tied, out[4], out[2])
    else:  # a second pass counts within the reach of the first; its own output, so no pass overwrites its input
        _row_counts[grid](x, y, eps, eps, eps, out, n, MODE=1, **shape)
        kk, (reach_x, reach_y) = out[0], out[1:3].to(x.dtype)
        counts = torch.empty_like(out)
        _row_counts[grid](x, y, eps, reach_x, reach_y, counts, n, MODE=2, **shape)
        nx, ny = counts[1], counts[2]
    return tied, kk.long(), nx.long(), ny.long()
