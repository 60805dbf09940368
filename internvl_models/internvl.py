"""InternVL-C / InternVL-G (the InternVL-14B-224px model): image and text embeddings in one 768-d space.

* InternVL-C: attention-pool the InternViT tokens (`clip_projector`).
* InternVL-G: InternVL-C plus the QLLaMA queries, attention-pooled by `clip_projector2`; the two unit vectors
  are summed and, like upstream, not renormalised (pitfall F.4).
* Text (both modes): QLLaMA over the tokens, hidden state at the last real token (EOS), @ `text_projection`.

Parameter names equal the official state-dict keys (INTERNVL.md B.4), so loading needs no renaming.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import InternVLConfig
from .errors import InputError
from .intern_vit import InternViT
from .layers import attend, merge_heads, split_heads
from .qllama import QLLaMA

MODES = {"C": "C", "G": "G", "InternVL-C": "C", "InternVL-G": "G"}


class PoolingCrossAttention(nn.Module):
    """Attention from a few query tokens to a token set, projected to `out_dim`.

    q/k/v are bias-free Linear layers plus separate `q_bias`/`k_bias`/`v_bias` parameters: the checkpoint
    stores them that way (`cross_attn.q.weight`, `cross_attn.q_bias`).
    """

    def __init__(self, dim: int, num_heads: int, out_dim: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.k_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, out_dim)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q = split_heads(self.q(q) + self.q_bias, self.num_heads)  # (B, H, Nq, D/H)
        k = split_heads(self.k(k) + self.k_bias, self.num_heads)  # (B, H, N, D/H)
        v = split_heads(self.v(v) + self.v_bias, self.num_heads)
        return self.proj(merge_heads(attend(q, k, v)))  # (B, Nq, out_dim)


class AttentionPoolingBlock(nn.Module):
    """(B, N, D) -> (B, out_dim): the mean of ALL tokens (CLS included) queries the tokens (pitfall F.5).

    q, k and v each get their own LayerNorm (eps 1e-5, the nn.LayerNorm default upstream uses); no residual.
    """

    def __init__(self, dim: int, num_heads: int, out_dim: int) -> None:
        super().__init__()
        self.norm1_q = nn.LayerNorm(dim, eps=1e-5)
        self.norm1_k = nn.LayerNorm(dim, eps=1e-5)
        self.norm1_v = nn.LayerNorm(dim, eps=1e-5)
        self.cross_attn = PoolingCrossAttention(dim, num_heads, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        query = x.mean(dim=1, keepdim=True)  # (B, 1, D)
        out = self.cross_attn(self.norm1_q(query), self.norm1_k(x), self.norm1_v(x))  # (B, 1, out_dim)
        return out.squeeze(1)


def _unit(x: torch.Tensor) -> torch.Tensor:
    # Plain division by the L2 norm, as upstream (no eps): identical results on non-zero vectors.
    return x / x.norm(dim=1, keepdim=True)


class InternVL(nn.Module):
    """InternVL-14B-224px: `encode_image(pixels, mode)`, `encode_text(ids)`, `forward` -> CLIP logits."""

    def __init__(self, config: InternVLConfig) -> None:
        super().__init__()
        self.config = config
        vision, text = config.vision_tower, config.qllama
        self.vision_model = InternViT(vision)
        self.qllama = QLLaMA(text)
        self.query_tokens = nn.Parameter(torch.randn(1, text.num_query_token, text.hidden_size) * 0.02)
        # Used as `x @ text_projection`, (D_text, E): not a Linear, so no transpose.
        self.text_projection = nn.Parameter(torch.randn(text.hidden_size, config.clip_embed_dim) * 0.02)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # CLIP's init; used as exp()
        heads, out = config.attn_pool_num_heads, config.clip_embed_dim
        self.clip_projector = AttentionPoolingBlock(vision.hidden_size, heads, out)
        self.clip_projector2 = AttentionPoolingBlock(text.hidden_size, heads, out)
        self.itm_head = nn.Linear(text.hidden_size, 2)  # image-text matching head; stored, unused at inference

    def encode_queries(self, vision_tokens: torch.Tensor) -> torch.Tensor:
        """InternViT tokens (B, N, Cv) -> QLLaMA query outputs (B, Q, D), final norm applied."""
        queries = self.query_tokens.expand(vision_tokens.shape[0], -1, -1)  # (B, Q, D)
        return self.qllama.encode_queries(queries, vision_tokens)

    def encode_image(self, pixels: torch.Tensor, mode: str = "C") -> torch.Tensor:
        """Normalised pixels (B, 3, S, S) -> (B, clip_embed_dim), not normalised.

        mode "C" (or "InternVL-C"): clip_projector(InternViT tokens).
        mode "G" (or "InternVL-G"): unit(C) + unit(clip_projector2(QLLaMA queries)); a sum of two unit vectors,
        not renormalised, as upstream returns it.
        """
        kind = _mode(mode)
        tokens = self.vision_model(pixels).last_hidden_state  # (B, 1+P, Cv)
        image_c = self.clip_projector(tokens)
        if kind == "C":
            return image_c
        image_g = self.clip_projector2(self.encode_queries(tokens))
        return _unit(image_c) + _unit(image_g)

    def text_hidden_states(self, input_ids: torch.Tensor) -> torch.Tensor:
        """ids (T, L) -> QLLaMA's normalised hidden states (T, L, D)."""
        return self.qllama.encode_text(input_ids)

    def encode_text(self, input_ids: torch.Tensor, *, packed: bool = True) -> torch.Tensor:
        """ids (T, L), right-padded with 0 and ending in EOS -> (T, clip_embed_dim), not normalised.

        The feature is the hidden state at sum(ids > 0) - 1, the EOS with right padding (pitfall F.3). `packed`
        runs the linear layers on the real tokens only (QLLaMA.text_features); False runs the padded batch as
        upstream does (the benchmarks' baseline; the same features).
        """
        if packed:
            return self.qllama.text_features(input_ids) @ self.text_projection
        hidden = self.text_hidden_states(input_ids)  # (T, L, D)
        last = (input_ids > 0).sum(dim=1) - 1  # (T,)
        features = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # (T, D)
        return features @ self.text_projection

    def forward(
        self, pixels: torch.Tensor, input_ids: torch.Tensor, mode: str = "C"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (logits_per_image (B, T), logits_per_text (T, B)) = exp(logit_scale) * cosine similarities."""
        image = _unit(self.encode_image(pixels, mode))
        text = _unit(self.encode_text(input_ids))
        logits_per_image = self.logit_scale.exp() * image @ text.t()
        return logits_per_image, logits_per_image.t()


def _mode(mode: str) -> str:
    if mode not in MODES:
        raise InputError(f"Unknown InternVL mode {mode!r}. Available: {sorted(MODES)}")
    return MODES[mode]
