"""CausalGrassmannMixing: attention-free token mixing through Pluecker coordinates of token-pair subspaces.

Zhang Chong, "Attention Is Not What You Need: Grassmann Flows as an Attention-Free Alternative for Sequence
Modeling" (arXiv 2512.19428, 2025).
"""
from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F
from torch import nn

from .probe_point import ProbePoint


def pluecker(a: torch.Tensor, b: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Pluecker coordinates of span(a, b): p_ij = a_i b_j - a_j b_i for the index pairs (rows, cols), i < j.

    One batched antisymmetric product a b^T - b a^T, read at its upper-triangular indices; with all r(r-1)/2
    pairs this embeds the 2-plane span(a, b) of Gr(2, r) into projective space. ``a`` and ``b`` broadcast
    against each other, shape (..., r). Backward keeps only a and b (the r x r product is transient).
    """
    return _Pluecker.apply(a, b, rows, cols)


class _Pluecker(torch.autograd.Function):
    """Backward without an accumulating scatter: with M the antisymmetric r x r matrix holding the output
    gradient g at (i, j) and -g at (j, i), dL/da = M b and dL/db = -M a. (Autograd through the indexing would
    scatter-add into the r x r product, which CUDA implements by sorting every index.)"""

    @staticmethod
    def forward(ctx, a, b, rows, cols):
        ctx.save_for_backward(a, b, rows, cols)
        outer = a[..., :, None] * b[..., None, :]
        return (outer - outer.transpose(-1, -2))[..., rows, cols]

    @staticmethod
    def backward(ctx, grad):
        a, b, rows, cols = ctx.saved_tensors
        r = a.shape[-1]
        m = grad.new_zeros(*grad.shape[:-1], r, r)
        m[..., rows, cols] = grad  # distinct (i, j) pairs: plain scatters
        m[..., cols, rows] = -grad
        grad_a = (m * b[..., None, :]).sum(-1).sum_to_size(a.shape) if ctx.needs_input_grad[0] else None
        grad_b = -(m * a[..., None, :]).sum(-1).sum_to_size(b.shape) if ctx.needs_input_grad[1] else None
        return grad_a, grad_b, None, None


def pluecker_linear(a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                    rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """W Pluecker(a, b) + bias without forming the Pluecker coordinates: the map is bilinear, so
        sum_{i<j} W[:, ij] (a_i b_j - a_j b_i) = sum_{i,j} A[:, i, j] a_i b_j,   A[:, i, j] = W[:, ij] = -A[:, j, i],
    one matmul of the outer products a b^T (..., r*r) with the antisymmetric fold A of W (d, r*r). The r x r
    products feed the matrix unit directly: no upper-triangle gather forward and no scatter backward, and the
    (..., r(r-1)/2) coordinates are never stored. ``a`` and ``b`` (..., r), ``weight`` (d, r(r-1)/2) with the
    pairs (rows, cols) as its input order. Equal to ``F.linear(pluecker(a, b, rows, cols), weight, bias)``."""
    r, w = a.shape[-1], weight.t()
    fold = w.new_zeros(r, r, w.shape[1]).index_put((rows, cols), w).index_put((cols, rows), -w)  # (r, r, d)
    outer = a[..., :, None] * b[..., None, :]
    return F.linear(outer.flatten(-2), fold.flatten(0, 1).t(), bias)


class CausalGrassmannMixing(nn.Module):
    """Causal Grassmann mixing of a sequence h (B, T, d), linear in T.

    z_t = W_red h_t (r dims); for each offset delta of ``windows``, p(t, delta) = Pluecker(z_t, z_{t-delta}) in
    R^{r(r-1)/2}, p_hat = p / ||p||_2; g_t = W_plu mean_{delta valid at t} p_hat(t, delta) (+ W_out when
    ``out_proj``: g_t <- W_out g_t; then ``dropout`` on g_t in training); alpha_t = sigmoid(W_gate [h_t; g_t]);
    output alpha_t * h_t + (1 - alpha_t) * g_t.

    Offsets pair z_t with the PAST vector z_{t-delta} (the paper writes t + delta, which lets a causal LM see the
    next token). An offset is valid at position t when t - delta >= 0; early positions average over fewer offsets,
    and position 0 (no valid offset) gets p_bar = 0, so g_0 = b_plu (then W_out if present). A pair whose angle
    has sine <= ``eps`` spans no 2-plane (p is numerically zero) and contributes p_hat = 0, still counted in the
    mean's denominator. This departs from a normalisation p / max(||p||, eps) with an absolute eps: the test is
    scale-free (sine, not ||p||), and a repeated token adds a zero rather than a unit vector of rounding noise.
    ``out_proj`` adds the d x d projection W_out that the paper's reported parameter counts imply; we place it on
    g (before the gate) so the gate's identity path alpha * h stays intact.

    Computation, exact in exact arithmetic: Pluecker is bilinear, so mean_delta p_hat(t, delta) =
    Pluecker(z_t, sum_delta w_{t,delta} z_{t-delta}) with w = valid / (count ||p||), and ||p||^2 =
    |a|^2 |b|^2 - (a.b)^2 (Lagrange identity, evaluated in float64). Hence one bilinear map per layer whatever
    the number of offsets: W_plu p_bar is one matmul of the outer products z_t c_t^T with W_plu folded into an
    antisymmetric r x r x d array (``pluecker_linear``). Cost O(B T (K r + r^2 d + d^2)); no T x T tensor anywhere.

    Probe points: ``plucker`` (B, T, r(r-1)/2) the averaged normalised Pluecker coordinates p_bar that enter
    W_plu (formed while a probe listens, and for fewer than d tokens, e.g. a cached generation step, where folding
    W_plu would cost more than the coordinates); ``gate`` (B, T, d) alpha.
    """

    def __init__(self, d_model: int, rank: int = 32, windows: tuple[int, ...] = (1, 2, 4, 8, 12, 16),
                 out_proj: bool = True, dropout: float = 0.0, eps: float = 1e-4):
        super().__init__()
        items = [] if isinstance(windows, (str, bytes)) else [w.item() if torch.is_tensor(w) else w for w in windows]
        whole = [isinstance(w, numbers.Real) and not isinstance(w, bool) and float(w).is_integer() for w in items]
        if not items or not all(whole):  # 4.0 from YAML is 4, numpy and torch integers are offsets; 1.5 or "12"
            # were read as 1 or (1, 2)
            raise ValueError(f"CausalGrassmannMixing: windows must be a sequence of whole offsets, got {windows!r}")
        windows = tuple(int(w) for w in items)
        if min(windows) < 1 or len(set(windows)) != len(windows):
            raise ValueError(f"CausalGrassmannMixing: windows must be distinct offsets >= 1, got {windows}")
        if rank < 2:
            raise ValueError(f"CausalGrassmannMixing: rank must be >= 2 for 2-planes in R^rank, got {rank}")
        self.d_model, self.rank, self.windows, self.eps = d_model, rank, windows, eps
        self.n_pairs = rank * (rank - 1) // 2
        self.reduce = nn.Linear(d_model, rank)
        self.plucker_proj = nn.Linear(self.n_pairs, d_model)
        self.out_proj = nn.Linear(d_model, d_model) if out_proj else None
        self.gate_proj = nn.Linear(2 * d_model, d_model)
        self.dropout = nn.Dropout(dropout)
        self.plucker = ProbePoint()
        self.gate = ProbePoint()
        self._constants: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def constants(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(offsets (K,), upper-triangle pairs (2, r(r-1)/2)) on ``device``, built once per device: building them
        per call from Python values copies from host memory, which on a GPU synchronises every layer at every
        generated token. (A cache rather than buffers: transformers' meta-device loading leaves non-persistent
        buffers uninitialised.)"""
        if device not in self._constants:
            self._constants[device] = (torch.tensor(self.windows, device=device),
                                       torch.triu_indices(self.rank, self.rank, offset=1, device=device))
        return self._constants[device]

    @property
    def context(self) -> int:
        """How many past reduced vectors a cached step needs: max(windows)."""
        return max(self.windows)

    def forward(self, h: torch.Tensor, positions: torch.Tensor | None = None,
                past: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mix ``h`` (B, T, d). Returns (output (B, T, d), reduced vectors z (B, T, r)).

        ``positions`` (T,) or (B, T): absolute position of each token (default P..P+T-1, P the tokens in ``past``);
        an offset is valid where position >= delta. ``past`` (B, P, r): reduced vectors of the P tokens just before ``h`` (from a cache).
        """
        if h.dim() != 3 or h.shape[-1] != self.d_model:
            raise ValueError(f"CausalGrassmannMixing: h must have shape (batch, time, {self.d_model}), got {tuple(h.shape)}")
        B, T, _ = h.shape
        z = self.reduce(h)
        P = 0
        full = z
        if past is not None:
            if past.dim() != 3 or past.shape[0] != B or past.shape[-1] != self.rank:
                raise ValueError(f"CausalGrassmannMixing: past must have shape ({B}, P, {self.rank}), got {tuple(past.shape)}")
            P = past.shape[1]
            full = torch.cat([past.to(z.dtype), z], 1)
        if positions is None:
            positions = P + torch.arange(T, device=h.device)  # the past's P tokens come first
        if positions.shape not in ((T,), (1, T), (B, T)):
            raise ValueError(f"CausalGrassmannMixing: positions must have shape ({T},), (1, {T}) or ({B}, {T}) "
                             f"(tokens), got {tuple(positions.shape)}")
        offsets, (rows, cols) = self.constants(h.device)
        idx = P + torch.arange(T, device=h.device)[:, None] - offsets    # (T, K) index of z_{t-delta} in full
        valid = (positions[..., None] >= offsets) & (idx >= 0)          # (T, K) or (B, T, K)
        b = full[:, idx.clamp_min(0)]                                    # (B, T, K, r): z_{t-delta}
        a = z[:, :, None]                                                # (B, T, 1, r): z_t
        a64, b64 = a.double(), b.double()
        aa, bb, ab = (a64 * a64).sum(-1), (b64 * b64).sum(-1), (a64 * b64).sum(-1)
        norm = (aa * bb - ab * ab).clamp_min(0).sqrt()                   # ||Pluecker(z_t, z_{t-delta})||
        planar = valid & (norm > self.eps * (aa * bb).sqrt())
        count = valid.sum(-1, keepdim=True).clamp_min(1)
        w = torch.where(planar, 1 / (count * norm.clamp_min(torch.finfo(torch.float64).tiny)), 0.0)
        c = (w.to(z.dtype)[..., None] * b).sum(2)                        # (B, T, r)
        # pluecker_linear folds W_plu (O(r^2 d) work per call): worth it from d tokens on; a probe needs p_bar itself
        if self.plucker._forward_hooks or B * T < self.d_model:
            g = self.plucker_proj(self.plucker(pluecker(z, c, rows, cols)))
        else:
            g = pluecker_linear(z, c, self.plucker_proj.weight, self.plucker_proj.bias, rows, cols)
        if self.out_proj is not None:
            g = self.out_proj(g)
        g = self.dropout(g)
        alpha = self.gate(torch.sigmoid(self.gate_proj(torch.cat([h, g], -1))))
        return alpha * h + (1 - alpha) * g, z
