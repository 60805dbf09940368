"""QLLaMA: the LLaMA-7B decoder of InternVL-14B with cross-attention into the InternViT tokens.

Two uses (INTERNVL.md B.3, B.5):

* **Queries** (InternVL-G image path): the learnable query tokens go in as `inputs_embeds`, attend to each other
  bidirectionally (no mask) and, in every `cross_attention_frequency`-th layer, to the vision tokens.
* **Text** (both modes): token embeddings with a causal + padding mask and no vision input.

Parameter names are the official ones: `model.embed_tokens`, `model.layers.{i}.{self_attn,cross_attn,mlp,...}`,
`model.norm`, `lm_head`.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import QLLaMAConfig
from .layers import CrossAttention, RMSNorm, SelfAttention, SwiGLU, rope_cos_sin


def text_attention_mask(token_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive (B, 1, L, L) mask: position i sees positions j <= i that are not padding.

    `token_mask` (B, L) is True for real tokens. Masked entries get finfo.min once (the official sum of two masks
    reaches -inf and is clamped back to finfo.min, which is the same value).
    """
    B, L = token_mask.shape
    causal = torch.ones(L, L, dtype=torch.bool, device=token_mask.device).tril()  # (L, L)
    allowed = causal[None, None] & token_mask[:, None, None, :]  # (B, 1, L, L)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=token_mask.device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)


class QLLaMADecoderLayer(nn.Module):
    """Self-attention (RoPE), then cross-attention on the query positions (some layers only), then the MLP."""

    def __init__(self, config: QLLaMAConfig, layer_idx: int) -> None:
        super().__init__()
        D, eps = config.hidden_size, config.rms_norm_eps
        self.num_query_token = config.num_query_token
        self.self_attn = SelfAttention(D, config.num_attention_heads)
        self.mlp = SwiGLU(D, config.intermediate_size)
        self.input_layernorm = RMSNorm(D, eps, cast="weight")
        self.post_attention_layernorm = RMSNorm(D, eps, cast="weight")
        self.has_cross_attn = config.has_cross_attention(layer_idx)
        if self.has_cross_attn:
            self.cross_attn = CrossAttention(D, config.vision_hidden_size, config.num_attention_heads, eps)

    def forward(
        self,
        h: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        vision: torch.Tensor | None,
    ) -> torch.Tensor:
        h = h + self.self_attn(self.input_layernorm(h), cos, sin, mask)
        # Cross-attention touches only the first num_query_token positions (the queries; any text after them is
        # left alone) and only when the sequence is at least that long. Upstream hard-codes 96 for both.
        Q = self.num_query_token
        if self.has_cross_attn and vision is not None and h.shape[1] >= Q:
            queries, rest = h[:, :Q], h[:, Q:]  # (B, Q, D), (B, L-Q, D)
            queries = queries + self.cross_attn(queries, vision)  # residual on the un-normalised queries
            h = torch.cat([queries, rest], dim=1)
        return h + self.mlp(self.post_attention_layernorm(h))


class QLLaMAModel(nn.Module):
    """Embeddings + decoder layers + final RMSNorm; returns the normalised last hidden state."""

    def __init__(self, config: QLLaMAConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(QLLaMADecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, cast="weight")

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        vision_hidden_states: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """inputs_embeds (B, L, D); attention_mask additive (B, 1, L, L) or None (bidirectional); vision (B, Nv, Cv).

        Positions are 0..L-1 whatever the padding (pitfall F.3), as in the official `forward_train`.
        """
        cfg = self.config
        cos, sin = rope_cos_sin(inputs_embeds.shape[1], cfg.head_dim, cfg.rope_theta, inputs_embeds.device)
        h = inputs_embeds
        for layer in self.layers:
            h = layer(h, cos, sin, attention_mask, vision_hidden_states)
        return self.norm(h)


class QLLaMA(nn.Module):
    """`model` + `lm_head` (the official LlamaForCausalLM wrapper). Retrieval uses only `model`.

    lm_head is kept so official checkpoints load strictly and captioning can be added later; see checkpoint.py for
    how it is tied to embed_tokens (pitfall F.1).
    """

    def __init__(self, config: QLLaMAConfig) -> None:
        super().__init__()
        self.model = QLLaMAModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    def encode_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        """ids (B, L), right-padded with 0 -> normalised hidden states (B, L, D); every id 0 counts as padding."""
        embeds = self.model.embed_tokens(input_ids)  # (B, L, D)
        mask = text_attention_mask(input_ids > 0, embeds.dtype)
        return self.model(embeds, mask)

    def encode_queries(self, queries: torch.Tensor, vision: torch.Tensor) -> torch.Tensor:
        """Query embeddings (B, Q, D) attending to each other (no mask) and to vision (B, Nv, Cv) -> (B, Q, D)."""
        return self.model(queries, None, vision)
