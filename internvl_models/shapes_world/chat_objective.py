"""What stage 2 of the shapes-world chat training optimises: the forward pass of a batch in the exact inference
layout, the answer loss, and the training-only losses that make the LM use the image (`referent_losses`).

Why the pointer: with the answer loss alone the LM learns the answer formats in a hundred steps but finds the object
a question is about among several only after thousands, since that loss gives attention almost no gradient at
first."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..chat import InternVLChat, cache_kwargs, output_cache
from .chat_data import N_COLOUR, N_SHAPE, Batch, SceneBank, region_cells
from .questions import MAX_IMAGES
from .training_common import split_ce


class AuxHeads(nn.Module):
    """Training-only heads that make the LM's two ends speak the same classes, so that finding the object a
    question is about becomes matching like with like: `image` reads colour / shape / cell off each projected
    image token, `parse` reads the colour / shape / cell the question names off the LM state that predicts
    the first answer token. `token` and `retrieved` teach what must travel with the pointer (see
    `referent_losses`): `token` reads an image token's image number and cell off the state the attend layer
    reads, `retrieved` reads the referent's colour / shape / cell / image number and box off that layer's output."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.image = nn.Linear(width, N_COLOUR + N_SHAPE + 9)
        self.parse = nn.Linear(width, N_COLOUR + N_SHAPE + 10)
        self.token = nn.Linear(width, MAX_IMAGES + 9)
        self.retrieved = nn.Linear(width, N_COLOUR + N_SHAPE + 9 + MAX_IMAGES + 4)


def shared_prefix_cache(lm: nn.Module, prefix: torch.Tensor, batch: int) -> Any:
    """The key/value cache of the system prefix, computed once and repeated for the batch (the gradient of every
    row flows back into the one computation)."""
    out = lm.model(inputs_embeds=lm.get_input_embeddings()(prefix[None]), use_cache=True)
    cache = output_cache(out)
    cache.batch_repeat_interleave(batch)
    return cache


def chat_forward(
    model: InternVLChat,
    heads: AuxHeads,
    feats: torch.Tensor,
    bank: SceneBank,
    batch: Batch,
    prefix: torch.Tensor,
    parse_layer: int = 1,
    attend: tuple[int, int] | None = None,
    sink: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(answer logits (T, V), targets (T,), answer index of each target (T,), auxiliary losses (align, parse,
    attend, retrieve)). Image features go where `InternVLChat.embed` puts them: into the `<IMG_CONTEXT>` slots,
    in order."""
    device, lm = prefix.device, model.language_model
    images = torch.cat([c.images for c in batch.chunks])
    vit = model.mlp1(feats[images].to(device))  # (I, n, D)
    token_cells = region_cells(int(vit.shape[1] ** 0.5)).to(device)
    cells = bank.cells[images].to(device)[:, token_cells]
    where = token_cells.expand(len(images), -1)[..., None]
    aux = split_ce(heads.image(vit), torch.cat([cells[..., :2], where], -1), (N_COLOUR, N_SHAPE, 9))
    logits, targets, rows, states, pointer, retrieve = [], [], [], [], [], []
    for chunk, features in zip(batch.chunks, vit.split([len(c.images) for c in batch.chunks]), strict=True):
        ids, labels = chunk.input_ids.to(device), chunk.labels.to(device)
        embeds = lm.get_input_embeddings()(ids)
        embeds = embeds.masked_scatter((ids == model.image_token_id).unsqueeze(-1), features.to(embeds.dtype))
        cache = shared_prefix_cache(lm, prefix, len(ids))
        out = lm.model(inputs_embeds=embeds, **cache_kwargs(lm.model, cache), use_cache=True, output_hidden_states=True,
                       output_attentions=attend is not None)  # fmt: skip
        keep, answer = labels != -100, chunk.answer.to(device)
        logits.append(lm.lm_head(out.last_hidden_state[keep]))
        targets.append(labels[keep])
        rows.append(answer[keep])
        # The position that predicts an answer's first token (the end of its prompt) holds the parsed question.
        starts = keep & (answer != F.pad(answer, (1, 0), value=-1)[:, :-1])
        states.append(out.hidden_states[parse_layer][starts])
        if attend is not None:
            layer, n_heads = attend
            attention = out.attentions[layer][:, :n_heads].mean(1)  # (B, L, prefix + L)
            found = referent_losses(attention, out.hidden_states[layer], out.hidden_states[layer + 1], heads, ids,
                                    starts, answer, chunk, bank, batch, model.image_token_id, sink)  # fmt: skip
            pointer.append(found[0])
            retrieve.append(found[1])
    parse = split_ce(heads.parse(torch.cat(states)), batch.referents.to(device), (N_COLOUR, N_SHAPE, 10))
    attended = torch.cat(pointer).mean() if pointer and len(torch.cat(pointer)) else aux.new_zeros(())
    retrieved = torch.stack(retrieve).mean() if retrieve else aux.new_zeros(())
    return torch.cat(logits), torch.cat(targets), torch.cat(rows), torch.stack([aux, parse, attended, retrieved])


def referent_losses(
    attention: torch.Tensor,
    before: torch.Tensor,
    after: torch.Tensor,
    heads: AuxHeads,
    ids: torch.Tensor,
    starts: torch.Tensor,
    answer: torch.Tensor,
    chunk: Any,
    bank: SceneBank,
    batch: Batch,
    image_token_id: int,
    sink: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(pointer: per answer, the mean over its positions of -log(attention mass on the image tokens of what its
    question is about); retrieval: the loss of reading what was pointed at). Every image token is one grid cell,
    so "where to look" is known exactly.

    The pointer acts at every answer position: "Image-2" names the image at its third token, a box its
    coordinates at tokens 6 to 24; a question about something absent points at the first token when `sink`.
    Pointing is not enough: a model that pointed right 90% of the time still named the shape and the position of
    what it pointed at wrong most of the time (the value fetched carried the colour, little else). So the attend
    layer's output at each answer position is taught the referent's colour, shape, cell, image number and box
    (only the image number when several objects of one image are meant), and its input at every image token that
    token's image number and cell (the image number exists only in the "Image-k:" text before the image)."""
    device = ids.device
    where, cells, boxes, cell_of_token, image_of_token = _image_tokens(ids, chunk, bank, image_token_id)
    retrieval = split_ce(heads.token(before[where[:, 0], where[:, 1]]),
                         torch.stack([image_of_token, cell_of_token], -1), (MAX_IMAGES, 9))  # fmt: skip
    prefix = attention.shape[-1] - ids.shape[1]
    pointer, reads, labels, boxed, box_targets, weights = [], [], [], [], [], []
    for row, start in starts.nonzero().tolist():
        a = int(answer[row, start])
        positions = (answer[row] == a).nonzero()[:, 0]
        colour, shape, cell = batch.referents[a].tolist()
        hit = (where[:, 0] == row) & (cells[:, 0] > 0)
        hit &= (cells[:, 0] == colour) | (colour == 0)
        hit &= (cell_of_token == cell - 1) | (cell == 0)
        hit &= (cells[:, 1] == shape) | (shape == 0)
        if not hit.any():
            if sink:
                pointer.append(-torch.log(attention[row, positions, 0] + 1e-6).mean())
            continue
        mass = attention[row][positions][:, prefix + where[hit, 1]].sum(-1)
        pointer.append(-torch.log(mass + 1e-6).mean())
        found = hit.nonzero()[:, 0]
        if len(set(image_of_token[found].tolist())) > 1:
            continue
        k, one = int(found[0]), len(found) == 1
        reads += [(row, int(p)) for p in positions]
        label = [int(cells[k, 0]), int(cells[k, 1]), int(cell_of_token[k])] if one else [-100] * 3
        labels += [[*label, int(image_of_token[k])]] * len(positions)
        boxed += [one] * len(positions)
        box_targets += [boxes[k]] * len(positions)
        weights += [1.0 / len(positions)] * len(positions)  # each answer counts once
    if reads:
        retrieval = _add_read_back(retrieval, heads.retrieved(after[tuple(torch.tensor(reads, device=device).T)]),
                                   labels, boxed, box_targets, weights)  # fmt: skip
    return (torch.stack(pointer) if pointer else attention.new_zeros(0)), retrieval


def _image_tokens(ids: torch.Tensor, chunk: Any, bank: SceneBank, image_token_id: int) -> tuple[torch.Tensor, ...]:
    """Per image token of `chunk`: its (row, position), cell contents (colour, shape, size), object box, cell
    and image number within its row."""
    token_cells = region_cells(3).to(ids.device)
    where = (ids == image_token_id).nonzero()  # (n_tokens, 2) row-major = the order of chunk.images' tokens
    cells = bank.cells[chunk.images].to(ids.device)[:, token_cells].reshape(-1, 3)  # (n_tokens, 3)
    boxes = bank.boxes[chunk.images].to(ids.device)[:, token_cells].reshape(-1, 4)
    cell_of_token = token_cells.repeat(len(chunk.images))
    first_token = F.pad(torch.bincount(where[:, 0], minlength=len(ids)).cumsum(0), (1, 0))[:-1]
    image_of_token = (torch.arange(len(where), device=ids.device) - first_token[where[:, 0]]) // len(token_cells)
    return where, cells, boxes, cell_of_token, image_of_token


def _add_read_back(
    total: torch.Tensor, out: torch.Tensor, labels: list, boxed: list[bool], box_targets: list, weights: list[float]
) -> torch.Tensor:
    """`total` plus the weighted losses of the `retrieved` head's outputs `out` against what was pointed at."""
    target, weight = torch.tensor(labels, device=out.device), torch.tensor(weights, device=out.device)
    for k, part in enumerate(out[:, :-4].split([N_COLOUR, N_SHAPE, 9, MAX_IMAGES], -1)):
        known = target[:, k] >= 0
        if known.any():
            ce = F.cross_entropy(part[known], target[known, k], reduction="none")
            total = total + (ce * weight[known]).sum() / weight[known].sum()
    one = torch.tensor(boxed, device=out.device)
    if one.any():
        err = F.smooth_l1_loss(out[one, -4:], torch.stack(box_targets)[one], beta=0.05, reduction="none")
        total = total + 4 * (err.mean(-1) * weight[one]).sum() / weight[one].sum()
    return total


def answer_loss(logits: torch.Tensor, targets: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Mean over answers of each answer's mean token loss: a 27-token box answer counts as much as a "yes"."""
    losses = F.cross_entropy(logits, targets, reduction="none")
    n_rows = int(rows.max()) + 1
    per_row = torch.zeros(n_rows, device=losses.device).index_add_(0, rows, losses)
    lengths = torch.zeros(n_rows, device=losses.device).index_add_(0, rows, torch.ones_like(losses))
    return (per_row / lengths).mean()


def answer_exact(logits: torch.Tensor, targets: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """(B,) bool: every answer token is the argmax, i.e. greedy decoding reproduces the gold answer exactly."""
    wrong = (logits.argmax(-1) != targets).long()
    return torch.zeros(int(rows.max()) + 1, dtype=torch.long, device=wrong.device).index_add_(0, rows, wrong) == 0
