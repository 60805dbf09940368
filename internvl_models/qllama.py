"""QLLaMA: the LLaMA-7B decoder of InternVL-14B with cross-attention into the InternViT tokens.

Two uses (INTERNVL.md B.3, B.5):

* **Queries** (InternVL-G image path): the learnable query tokens go in as `inputs_embeds`, attend to each other
  bidirectionally (no mask) and, in every `cross_attention_frequency`-th layer, to the vision tokens.
* **Text** (both modes): token embeddings with a causal + padding mask and no vision input.

Text features (`text_features`) run the linear layers, where nearly all the FLOPs are, on the real tokens of the
batch only, packed end to end, and attention on the padded layout (layers.Packing). A batch padded to its longest
query computes ~35% padding at typical query lengths, the official padding to 80 ~80%; packed, none. Every real
token goes through the same row-wise arithmetic and the same attention as in the padded batch, so the features
are the same (bitwise on CPU).

Parameter names are the official ones: `model.embed_tokens`, `model.layers.{i}.{self_attn,cross_attn,mlp,...}`,
`model.norm`, `lm_head`.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import QLLaMAConfig
from .layers import CrossAttention, Packing, RMSNorm, SelfAttention, SwiGLU, rope_cos_sin


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
        packing: Packing | None = None,
    ) -> torch.Tensor:
        h = h + self.self_attn(self.input_layernorm(h), cos, sin, mask, packing)
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
        packing: Packing | None = None,
    ) -> torch.Tensor:
        """inputs_embeds (B, L, D); attention_mask additive (B, 1, L, L) or None (bidirectional); vision (B, Nv, Cv).

        Positions are 0..L-1 whatever the padding (pitfall F.3), as in the official `forward_train`. With `packing`,
        inputs_embeds is (1, S, D), the real tokens of a (B, L) batch (text only), and so is the output.
        """
        cfg = self.config
        length = inputs_embeds.shape[1] if packing is None else packing.shape[1]
        cos, sin = rope_cos_sin(length, cfg.head_dim, cfg.rope_theta, inputs_embeds.device)
        h = inputs_embeds
        for layer in self.layers:
            h = layer(h, cos, sin, attention_mask, vision_hidden_states, packing)
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

    def text_features(self, input_ids: torch.Tensor) -> torch.Tensor:
        """ids (B, L), right-padded with 0 -> the normalised hidden state at position sum(ids > 0) - 1 (B, D).

        What `encode_text(ids)[b, sum(ids[b] > 0) - 1]` gives, with the linear layers run on the first
        sum(ids[b] > 0) tokens of each row only: under the causal mask later positions cannot change that one.
        A batch with a row that does not start with a real token (never tokenizer output, which starts with BOS)
        takes the padded path: a fully masked row attends uniformly to every position of the padded row,
        padding included, which a packed batch does not compute.
        """
        lengths = (input_ids > 0).sum(dim=1)  # the feature is read at lengths - 1
        if not bool((input_ids[:, 0] > 0).all()):
            hidden = self.encode_text(input_ids)
            return hidden[torch.arange(len(hidden), device=hidden.device), lengths - 1]
        # Positions past the longest feature position cannot reach any feature (causal mask): a batch padded to
        # 80 by a caller attends over its longest query only.
        input_ids = input_ids[:, : int(lengths.max())]
        if bool((lengths == input_ids.shape[1]).all()):
            # No padding left (one query, or a batch of equal lengths): the padded layout is the packed one, so
            # the model runs on it as it is, without a Packing's pad and unpad around every layer's attention.
            return self.encode_text(input_ids)[:, -1]
        keep = torch.arange(input_ids.shape[1], device=input_ids.device)[None, :] < lengths[:, None]  # (B, L)
        embeds = self.model.embed_tokens(input_ids[keep])[None]  # (1, S, D): row after row
        mask = text_attention_mask(input_ids > 0, embeds.dtype)  # the padded batch's (B, 1, L, L) mask
        hidden = self.model(embeds, mask, packing=Packing(keep))[0]  # (S, D)
        return hidden[torch.cumsum(lengths, 0) - 1]

    def encode_queries(self, queries: torch.Tensor, vision: torch.Tensor) -> torch.Tensor:
        """Query embeddings (B, Q, D) attending to each other (no mask) and to vision (B, Nv, Cv) -> (B, Q, D)."""
        return self.model(queries, None, vision)
