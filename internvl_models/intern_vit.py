"""InternViT: the vision tower of InternVL-C/G (InternViT-6B) and of the InternVL 1.5-3 chat models (6B and 300M).

A plain pre-norm ViT with per-channel layer scales, a CLS token, learned absolute position embeddings and no
final norm (INTERNVL.md A.2-A.4). The two variants differ only in config: RMSNorm + QK-norm over the full width +
no qkv bias (6B), or LayerNorm + qkv bias (300M). Parameter names are the official ones (`embeddings.*`,
`encoder.layers.{i}.*`), so `vision_model.*` of an official state dict loads as is.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .config import InternViTConfig
from .layers import MLP, RMSNorm, attend, merge_heads, split_heads


class InternViTOutput(NamedTuple):
    last_hidden_state: torch.Tensor  # (B, 1+P, C), CLS first, not normalised (there is no final norm)
    hidden_states: tuple[torch.Tensor, ...] | None  # embeddings, then the output of each layer (L+1 entries)


def _norm(config: InternViTConfig) -> nn.Module:
    if config.norm_type == "rms_norm":
        return RMSNorm(config.hidden_size, config.layer_norm_eps, cast="input")
    return nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)


def interpolate_pos_embed(pos_embed: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Resize the patch part of a (1, 1+g*g, C) position embedding to a (height, width) patch grid; CLS kept.

    Bicubic with align_corners=False in float32, as the chat-era official code does at every call (A.4). At the
    native grid that is the identity, so it is skipped.
    """
    cls_pos, patch_pos = pos_embed[:, :1], pos_embed[:, 1:]
    grid = int(patch_pos.shape[1] ** 0.5)
    if (height, width) == (grid, grid):
        return pos_embed
    C = pos_embed.shape[-1]
    patch_pos = patch_pos.float().reshape(1, grid, grid, C).permute(0, 3, 1, 2)  # (1, C, g, g)
    patch_pos = F.interpolate(patch_pos, size=(height, width), mode="bicubic", align_corners=False)
    patch_pos = patch_pos.reshape(1, C, height * width).permute(0, 2, 1).to(pos_embed.dtype)  # (1, h*w, C)
    return torch.cat([cls_pos, patch_pos], dim=1)


class InternViTEmbeddings(nn.Module):
    """Conv patchify (kernel = stride = patch, with bias) + CLS token + position embeddings."""

    def __init__(self, config: InternViTConfig) -> None:
        super().__init__()
        C = config.hidden_size
        self.patch_size = config.patch_size
        self.class_embedding = nn.Parameter(torch.randn(1, 1, C) * config.initializer_range)
        self.patch_embedding = nn.Conv2d(config.num_channels, C, config.patch_size, stride=config.patch_size)
        self.position_embedding = nn.Parameter(torch.randn(1, config.num_positions, C) * config.initializer_range)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        dtype = self.patch_embedding.weight.dtype
        patches = self.patch_embedding(pixels.to(dtype))  # (B, C, h, w)
        B, C, h, w = patches.shape
        patches = patches.flatten(2).transpose(1, 2)  # (B, h*w, C), row-major patches
        cls = self.class_embedding.expand(B, 1, C).to(dtype)
        return torch.cat([cls, patches], dim=1) + interpolate_pos_embed(self.position_embedding, h, w)


class InternViTAttention(nn.Module):
    """Bidirectional self-attention with a fused qkv projection and optional QK-norm.

    `qkv` outputs [q | k | v], each C wide with heads contiguous inside. QK-norm normalises q and k over the
    *full* width C with one (C,) weight each, before the split into heads (pitfall F.6), so it is applied to the
    (B, N, C) tensors here.
    """

    def __init__(self, config: InternViTConfig) -> None:
        super().__init__()
        C = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.qkv = nn.Linear(C, 3 * C, bias=config.qkv_bias)
        self.qk_normalization = config.qk_normalization
        if config.qk_normalization:
            self.q_norm = RMSNorm(C, config.layer_norm_eps, cast="input")
            self.k_norm = RMSNorm(C, config.layer_norm_eps, cast="input")
        self.proj = nn.Linear(C, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)  # 3 x (B, N, C)
        if self.qk_normalization:
            q, k = self.q_norm(q), self.k_norm(k)
        out = attend(split_heads(q, self.num_heads), split_heads(k, self.num_heads), split_heads(v, self.num_heads))
        return self.proj(merge_heads(out))


class InternViTLayer(nn.Module):
    """x + ls1 * Attn(norm1(x)), then x + ls2 * MLP(norm2(x)).

    ls1/ls2 are bare (C,) parameters on the layer, not a LayerScale module: that is how the checkpoints name them
    (`encoder.layers.{i}.ls1`).
    """

    def __init__(self, config: InternViTConfig) -> None:
        super().__init__()
        C = config.hidden_size
        self.attn = InternViTAttention(config)
        self.mlp = MLP(C, config.intermediate_size)
        self.norm1 = _norm(config)
        self.norm2 = _norm(config)
        self.ls1 = nn.Parameter(config.initializer_factor * torch.ones(C))
        self.ls2 = nn.Parameter(config.initializer_factor * torch.ones(C))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The chat-era code casts the norm output back to the residual dtype (an fp32 LayerNorm in a bf16 tower).
        x = x + self.attn(self.norm1(x).to(x.dtype)) * self.ls1
        return x + self.mlp(self.norm2(x).to(x.dtype)) * self.ls2


class InternViTEncoder(nn.Module):
    """The stack of layers; exists so the parameter names read `encoder.layers.{i}.*` as upstream."""

    def __init__(self, config: InternViTConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(InternViTLayer(config) for _ in range(config.num_hidden_layers))


class InternViT(nn.Module):
    """pixels (B, 3, H, W), H and W multiples of the patch size -> tokens (B, 1 + H*W/patch², C)."""

    def __init__(self, config: InternViTConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = InternViTEmbeddings(config)
        self.encoder = InternViTEncoder(config)

    def forward(self, pixels: torch.Tensor, output_hidden_states: bool = False) -> InternViTOutput:
        x = self.embeddings(pixels)
        hidden_states = [x] if output_hidden_states else None  # kept only on request: 49 x (B, 257, 3200) for 6B
        for layer in self.encoder.layers:
            x = layer(x)
            if hidden_states is not None:
                hidden_states.append(x)
        return InternViTOutput(x, tuple(hidden_states) if hidden_states is not None else None)
