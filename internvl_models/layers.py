"""Blocks shared by the InternVL towers: norms, attention (one SDPA call), MLPs, RoPE, cross-attention.

Module and parameter names follow the official checkpoints (`fc1`, `gate_proj`, `q_proj`, `norm1`, ...) so a state
dict loads without renaming. Shape letters: B batch, N/L sequence, C width, H heads, D head width.

Projections that read the same input (QLLaMA's q/k/v, the cross-attention's k/v) can be fused after loading
(`fuse_projections`): their weights are moved into one contiguous matrix and the checkpoint-named parameters become
views of it, so one GEMM replaces three at no extra memory and the state dict keeps its official keys.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

_HALF_DTYPES = (torch.float16, torch.bfloat16)
# bench/encode.py's "before" figure and the equivalence tests switch `attend` to the textbook math; process-wide and
# not thread-safe, so never flipped while serving.
_EAGER_ATTENTION = False


class RMSNorm(nn.Module):
    """RMSNorm with the statistics in float32, as both official variants do; they differ only in the final cast.

    * `cast="input"` (InternViT's InternRMSNorm, INTERNVL.md A.2): normalise in fp32, cast back to the *input*
      dtype, then multiply by the weight.
    * `cast="weight"` (QLLaMA's LlamaRMSNorm, B.3): normalise in fp32, cast to the *weight* dtype only when that is
      fp16/bf16, then multiply by the weight. With bf16 activations and fp32 weights the result stays fp32.
    In a single-dtype model both give the same numbers.
    """

    def __init__(self, dim: int, eps: float, *, cast: str = "input") -> None:
        super().__init__()
        if cast not in ("input", "weight"):
            raise ValueError(f"cast must be 'input' or 'weight', not {cast!r}")
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps
        self.cast = cast

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        input_dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.cast == "input":
            return self.weight * x.to(input_dtype)
        if self.weight.dtype in _HALF_DTYPES:
            x = x.to(self.weight.dtype)
        return self.weight * x


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, N, H*D) -> (B, H, N, D); heads are contiguous D-wide slices of the width, as in every checkpoint here."""
    B, N, C = x.shape
    return x.view(B, N, num_heads, C // num_heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, H, N, D) -> (B, N, H*D)."""
    B, H, N, D = x.shape
    return x.transpose(1, 2).reshape(B, N, H * D)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q kᵀ / sqrt(D) + mask) v for (B, H, N, D) inputs; the only attention kernel of the library.

    `mask` is additive (0 = keep, finfo.min = drop) and broadcastable to (B, H, Nq, Nk). Additive rather than
    boolean on purpose: a fully masked row then gives a uniform softmax, as the official code does, not NaN.
    """
    if _EAGER_ATTENTION:
        return eager_attend(q, k, v, mask)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def eager_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The same math with the (B, H, Nq, Nk) score matrix materialised and an fp32 softmax (HF's eager path)."""
    scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    if mask is not None:
        scores = scores + mask
    return scores.softmax(dim=-1, dtype=torch.float32).to(q.dtype) @ v


@contextmanager
def eager_attention() -> Iterator[None]:
    """Within the block every `attend` call runs `eager_attend` (benchmarks' baseline and tests only)."""
    global _EAGER_ATTENTION
    before, _EAGER_ATTENTION = _EAGER_ATTENTION, True
    try:
        yield
    finally:
        _EAGER_ATTENTION = before


class FusedProjections:
    """Bias-free Linear layers over one input, computed as one GEMM once `fuse` has made their weights adjacent.

    The fused path is taken only while the parameters still alias the fused matrix (a later `.to()` or
    `load_state_dict` gives them new storage: then the separate layers run, correct if slower) and only without
    autograd (the parameters, not the fused matrix, are what a trainer differentiates).
    """

    def __init__(self, layers: list[nn.Linear]) -> None:
        self.layers = layers
        self.weight: torch.Tensor | None = None

    def fuse(self) -> None:
        weights = [layer.weight for layer in self.layers]
        if any(w.is_meta for w in weights) or len({(w.dtype, w.device, w.shape[1]) for w in weights}) != 1:
            return  # not loaded yet, or mixed dtypes/devices: leave the layers as they are
        fused = torch.cat([w.detach() for w in weights])  # (sum of outputs, in)
        start = 0
        for layer in self.layers:
            rows = layer.weight.shape[0]
            layer.weight = nn.Parameter(fused[start : start + rows], requires_grad=layer.weight.requires_grad)
            start += rows
        self.weight = fused

    def _aliased(self) -> bool:
        fused, start = self.weight, 0
        for layer in self.layers:
            if layer.weight.data_ptr() != fused[start:].data_ptr() or layer.weight.dtype != fused.dtype:
                return False
            start += layer.weight.shape[0]
        return True

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.weight is not None and not self._aliased():
            self.weight = None  # the parameters moved (`.to()`, a new state dict): free the stale matrix
        if self.weight is None or torch.is_grad_enabled():
            return tuple(layer(x) for layer in self.layers)
        return F.linear(x, self.weight).split([layer.weight.shape[0] for layer in self.layers], dim=-1)


def fuse_projections(model: nn.Module) -> nn.Module:
    """Fuse every `FusedProjections` group of `model` (after loading its weights); returns the model."""
    for module in model.modules():
        for group in getattr(module, "fused_groups", ()):
            group.fuse()
    return model


class MLP(nn.Module):
    """fc2(GELU(fc1(x))) with biases; GELU is the exact erf form (HF's "gelu")."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class SwiGLU(nn.Module):
    """LLaMA MLP: down(silu(gate(x)) * up(x)), no biases."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def rope_cos_sin(seq_len: int, head_dim: int, theta: float, device: torch.device) -> tuple[torch.Tensor, ...]:
    """cos, sin of shape (seq_len, head_dim) in float32 for positions 0..seq_len-1 ("rotate_half" layout).

    Computed on the fly rather than stored: the official `inv_freq` is not in the state dict, and a buffer would
    be left on the meta device by meta loading and be cast to bf16 by `model.to(dtype)`. This costs one
    (L, D) outer product per forward, negligible next to the attention.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device).float() / head_dim))  # (D/2,)
    positions = torch.arange(seq_len, device=device, dtype=torch.float32)
    freqs = positions[:, None] * inv_freq[None, :]  # (L, D/2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (L, D): the two halves share frequencies
    return emb.cos(), emb.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """[x1, x2] -> [-x2, x1] over the last dim (the non-interleaved RoPE convention of HF LLaMA)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, H, L, D); cos/sin (L, D) in fp32, cast to x's dtype first as the official code does."""
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return x * cos + rotate_half(x) * sin


class Packing:
    """The real tokens of a right-padded (B, L) batch, packed end to end as (1, S, C) for the linear layers.

    Attention alone goes back to the padded (B, L) layout (`pad`, zeros at padding, which the caller's mask hides)
    and returns (`unpad`): it is a small share of the FLOPs at query lengths, and so every query attends exactly as
    in the padded batch, with no S x S mask across queries.
    """

    def __init__(self, keep: torch.Tensor) -> None:
        self.shape = tuple(keep.shape)  # (B, L)
        self.index = keep.reshape(-1).nonzero().squeeze(1)  # (S,) flat positions of the real tokens

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """(1, S, C) -> (B, L, C)."""
        B, L = self.shape
        out = x.new_zeros(B * L, x.shape[-1])
        return out.index_copy_(0, self.index, x[0]).view(B, L, -1)

    def unpad(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, C) -> (1, S, C)."""
        return x.reshape(-1, x.shape[-1]).index_select(0, self.index)[None]


class SelfAttention(nn.Module):
    """LLaMA self-attention with RoPE: q/k/v/o projections without bias, an additive mask from the caller."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim, bias=False)
        self.o_proj = nn.Linear(dim, dim, bias=False)
        self.qkv = FusedProjections([self.q_proj, self.k_proj, self.v_proj])
        self.fused_groups = (self.qkv,)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        packing: Packing | None = None,
    ) -> torch.Tensor:
        q, k, v = self.qkv(x)  # (B, L, C) each, or (1, S, C) packed
        if packing is not None:
            q, k, v = packing.pad(q), packing.pad(k), packing.pad(v)
        q = apply_rope(split_heads(q, self.num_heads), cos, sin)  # (B, H, L, D)
        k = apply_rope(split_heads(k, self.num_heads), cos, sin)
        out = merge_heads(attend(q, k, split_heads(v, self.num_heads), mask))  # (B, L, C)
        return self.o_proj(out if packing is None else packing.unpad(out))


class CrossAttention(nn.Module):
    """QLLaMA cross-attention: RMSNorm'd queries attend to RMSNorm'd vision tokens; no RoPE, no mask.

    k_proj / v_proj map the vision width (3200 in the release) to the text width. The caller adds the residual.
    """

    def __init__(self, dim: int, context_dim: int, num_heads: int, eps: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm1 = RMSNorm(dim, eps, cast="weight")
        self.norm2 = RMSNorm(context_dim, eps, cast="weight")
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(context_dim, dim, bias=False)
        self.v_proj = nn.Linear(context_dim, dim, bias=False)
        self.o_proj = nn.Linear(dim, dim, bias=False)
        self.kv = FusedProjections([self.k_proj, self.v_proj])
        self.fused_groups = (self.kv,)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        k, v = self.kv(self.norm2(context))  # (B, Nv, D) each
        q = split_heads(self.q_proj(self.norm1(x)), self.num_heads)  # (B, H, Nq, D)
        k, v = split_heads(k, self.num_heads), split_heads(v, self.num_heads)  # (B, H, Nv, D)
        return self.o_proj(merge_heads(attend(q, k, v)))
