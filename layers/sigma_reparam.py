"""sigmaReparam: spectrally reparametrised Linear and Conv2d layers, and the in-place converter for any model.

Zhai et al., "Stabilizing Transformer Training by Preventing Attention Entropy Collapse" (ICML 2023, arXiv
2303.06296), eq. 3: W_hat = (gamma / sigma(W)) W, with sigma(W) the spectral norm of W estimated by power
iteration and gamma a learned scalar. A converted layer keeps its ``weight`` (W) and ``bias`` and adds the
parameter ``gamma`` and the buffers ``u`` (left) and ``v`` (right singular vector estimates), so the state-dict
keys of ``blocks.0.attn.qkv`` are ``weight, bias, gamma, u, v``.
"""
from __future__ import annotations

import difflib
import fnmatch
import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .autocast_off import autocast_off


def _recomputing() -> bool:
    """Whether this forward is activation checkpointing's recomputation, which runs inside a backward pass (either
    checkpoint flavour; timm's ``set_grad_checkpointing``). It must not iterate again: u and v would advance twice
    per step, and the gradient would be that of another sigma than the forward used. Under ``torch.compile`` the
    compiled graph replays the forward's own ops, so nothing needs detecting there."""
    return not torch.compiler.is_compiling() and torch._C._current_graph_task_id() != -1


def top_singular(weight: torch.Tensor) -> dict[str, torch.Tensor]:
    """u, v: the top singular vectors of ``weight`` flattened to (out, fan_in); gamma: its top singular value,
    shape (1,); in the weight's dtype (the SVD itself in float32 at least)."""
    U, S, Vh = torch.linalg.svd(weight.detach().flatten(1).float(), full_matrices=False)
    dtype = weight.dtype
    return {"u": U[:, 0].to(dtype).contiguous(), "v": Vh[0].to(dtype).contiguous(), "gamma": S[:1].to(dtype)}


class SigmaReparam(nn.Module):
    """Mixin for a layer whose ``weight`` is used as W_hat = (gamma / sigma(W)) W (paper eq. 3), W flattened to
    (out, fan_in) (a Conv2d kernel to out x (in/groups * kh * kw)).

    sigma(W) = u^T W v, with u, v updated by one power iteration per training forward, without gradient:
    v <- W^T u / ||W^T u||, u <- W v / ||W v||. The gradient of sigma flows into W only (d sigma / dW = u v^T).
    u, v start as the top singular vectors of the initial W (SVD) and gamma as sigma(W_0), so conversion leaves the
    layer's function unchanged. Eval forwards read u, v and never write them, and neither does the recomputation of
    activation checkpointing. Cost: two matrix-vector products per training forward for u, v and a third for sigma
    (eval forwards: that one).
    """

    gamma: nn.Parameter
    u: torch.Tensor
    v: torch.Tensor

    def _init_reparam(self) -> None:
        start = top_singular(self.weight)
        self.register_buffer("u", start["u"])
        self.register_buffer("v", start["v"])
        self.gamma = nn.Parameter(start["gamma"], requires_grad=self.weight.requires_grad)  # a frozen layer stays so

    @torch.no_grad()
    def restart_reparam(self, names=("u", "v", "gamma")) -> None:
        """Set ``names`` (of u, v, gamma) in place as conversion does, from the current weight: with all three, the
        layer computes its plain weight W again. For a checkpoint that lacks them (of a plain or a folded model)."""
        start = top_singular(self.weight)
        for name in names:
            getattr(self, name).copy_(start[name])

    @property
    def sigma(self) -> torch.Tensor:
        """The current estimate u^T W v of the spectral norm of the (flattened) weight, shape (1,), no gradient."""
        with torch.no_grad():
            return (self.u @ self.weight.flatten(1) @ self.v).reshape(1)

    def folded_weight(self) -> torch.Tensor:
        """W_hat = (gamma / sigma) W from the stored u, v, without a power iteration or gradient: the value an eval
        forward uses, and what ``remove_sigma_reparam`` stores."""
        with torch.no_grad():
            return self.weight * (self.gamma / self.sigma)

    def reparametrized_weight(self) -> torch.Tensor:
        """(gamma / sigma(W)) W, shaped like ``weight``; a training forward first runs one power iteration."""
        matrix = self.weight.flatten(1)
        # in the weight's dtype even under autocast: a bf16 sigma would be off by up to 2^-8 of itself, a different
        # scale of W_hat at each step, and casting W for each matrix-vector product costs more than the products
        with autocast_off(matrix.device.type):
            if self.training and not _recomputing():
                with torch.no_grad():
                    self.v.copy_(F.normalize(matrix.t() @ self.u, dim=0))
                    self.u.copy_(F.normalize(matrix @ self.v, dim=0))
            # clones: a later forward's in-place update must not touch the tensors this graph saved for backward
            sigma = self.u.clone() @ matrix @ self.v.clone()
        return self.weight * (self.gamma / sigma)

    def extra_repr(self) -> str:
        return super().extra_repr() + ", sigma_reparam=True"


class SigmaLinear(SigmaReparam, nn.Linear):
    """``nn.Linear`` with W_hat = (gamma / sigma(W)) W (see ``SigmaReparam``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.reparametrized_weight(), self.bias)


class SigmaConv2d(SigmaReparam, nn.Conv2d):
    """``nn.Conv2d`` with W_hat = (gamma / sigma(W)) W, sigma of the kernel flattened to out x (in/groups*kh*kw)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.reparametrized_weight(), self.bias)


_SIGMA_OF = {nn.Linear: SigmaLinear, nn.Conv2d: SigmaConv2d}
_PLAIN_OF = {SigmaLinear: nn.Linear, SigmaConv2d: nn.Conv2d}
NORM_TYPES = (nn.LayerNorm, nn.RMSNorm)


def _selected(name: str, include: tuple[str, ...], exclude: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in include) and not any(fnmatch.fnmatchcase(name, p) for p in exclude)


def _patterns(argument: str, patterns) -> tuple[str, ...]:
    if isinstance(patterns, str) or not all(isinstance(p, str) for p in patterns):
        raise TypeError(f"{argument} must be a sequence of glob patterns over module names, got {patterns!r}")
    return tuple(patterns)


def apply_sigma_reparam(model: nn.Module, include: Sequence[str] = ("*",), exclude: Sequence[str] = (),
                        remove_norms: bool = False) -> nn.Module:
    """Convert ``model`` in place: every ``nn.Linear`` and ``nn.Conv2d`` whose module name (``""`` for ``model``
    itself) matches a glob in ``include`` and none in ``exclude`` becomes a ``SigmaLinear``/``SigmaConv2d`` keeping
    its weight and bias tensors (an optimizer holding them stays valid; add the new ``gamma`` parameters to it).
    Exactly those classes: a subclass may use its weight its own way (timm's ``StdConv2d`` standardises it,
    ``Conv2dSame`` pads in its forward, ``nn.MultiheadAttention`` reads its ``out_proj.weight`` directly), so selected
    subclasses and ``nn.MultiheadAttention`` modules (whose in-projection is a bare parameter) stay plain, with a
    warning that names them. With ``remove_norms`` every selected LayerNorm/RMSNorm is replaced by ``nn.Identity``
    (the paper's "sigmaReparam without LayerNorm" models). Without ``remove_norms`` the converted model computes
    the same function. Returns ``model``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"apply_sigma_reparam: model must be an nn.Module, got {type(model).__name__}")
    include, exclude = _patterns("include", include), _patterns("exclude", exclude)
    modules = list(model.named_modules())
    names = [name for name, _ in modules]
    for argument, patterns in (("include", include), ("exclude", exclude)):
        unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(name, p) for name in names)]
        if unmatched:  # a misspelt glob would otherwise convert nothing, or what it meant to keep plain
            close = {p: near for p in unmatched if (near := difflib.get_close_matches(p, names, n=3))}
            raise ValueError(f"apply_sigma_reparam: {argument} patterns {unmatched} match no module name of "
                             f"{type(model).__name__}{f' (closest: {close})' if close else ''}; names look like "
                             f"{names[1:6]}")
    selected = [(name, module) for name, module in modules if _selected(name, include, exclude)]
    layers = [(name, module) for name, module in selected if type(module) in _SIGMA_OF]
    plain = [f"{name or 'model'} ({type(module).__name__})" for name, module in selected
             if (isinstance(module, tuple(_SIGMA_OF)) and type(module) not in _SIGMA_OF)
             or isinstance(module, nn.MultiheadAttention)]
    norms = [name for name, module in selected if remove_norms and isinstance(module, NORM_TYPES)]
    if "" in norms:
        raise ValueError("apply_sigma_reparam: model is itself a norm layer; remove_norms cannot replace it")
    # checked before anything changes, so a refused model is left as it was
    degenerate = [name or "model" for name, module in layers if not module.weight.is_meta
                  and not (torch.isfinite(module.weight).all() and module.weight.detach().ne(0).any())]
    if degenerate:
        raise ValueError(f"apply_sigma_reparam: the weight of {', '.join(degenerate)} is all zeros or not finite. "
                         "sigmaReparam starts gamma at sigma(W_0), so a zero W_0 gives W_hat = 0 with no gradient "
                         "to W or gamma ever (and 0/0 in the forward): initialise these layers to nonzero values "
                         "(timm: not weight_init='jax', which zeroes the head) or leave them out with exclude=")
    for _, module in layers:
        module.__class__ = _SIGMA_OF[type(module)]
        module._init_reparam()
    for name in norms:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, nn.Identity())
    if plain:
        shown = ", ".join(plain[:6]) + (f" and {len(plain) - 6} more" if len(plain) > 6 else "")
        warnings.warn(f"apply_sigma_reparam left {len(plain)} selected layers plain: {shown}. Only nn.Linear and "
                      "nn.Conv2d themselves are converted (a subclass may use its weight its own way, and "
                      "nn.MultiheadAttention's in-projection is a bare parameter); leave them out with exclude= to "
                      "silence this", UserWarning, stacklevel=2)
    return model


def remove_sigma_reparam(model: nn.Module) -> nn.Module:
    """Fold every sigmaReparam layer of ``model`` back, in place, into a plain ``nn.Linear``/``nn.Conv2d`` whose
    weight is a new parameter holding the current W_hat = (gamma / sigma(W)) W (read from the buffers, as in eval):
    for export and inference at the plain model's cost. A weight tied to another module is untied. Returns
    ``model``."""
    for module in model.modules():
        if type(module) in _PLAIN_OF:
            folded = module.folded_weight()
            requires_grad = module.weight.requires_grad
            del module.gamma, module.u, module.v
            module.__class__ = _PLAIN_OF[type(module)]
            module.weight = nn.Parameter(folded, requires_grad=requires_grad)
    return model
