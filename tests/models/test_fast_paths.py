"""The optimised encoder paths compute what the plain ones do: fused projections, packed text, SDPA vs eager.

Each pair runs on the same random InternVL (float32, CPU) and must agree to float32 rounding; the packed text path
is also checked on the awkward inputs (ids of 0 inside a text, a row that starts with padding, one-token rows).
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from factories import tiny_internvl_config

from internvl_models.checkpoint import load_internvl, save_internvl
from internvl_models.internvl import InternVL
from internvl_models.layers import FusedProjections, eager_attention, fuse_projections

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def model() -> InternVL:
    torch.manual_seed(0)
    return InternVL(tiny_internvl_config(vocab_size=300)).eval()


def _ids(lengths: list[int], length: int, seed: int = 0) -> torch.Tensor:
    """Right-padded rows of BOS, random real tokens and EOS, like the tokenizer's output."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.zeros(len(lengths), length, dtype=torch.long)
    for row, n in enumerate(lengths):
        ids[row, :n] = torch.randint(3, 300, (n,), generator=generator)
        ids[row, 0], ids[row, n - 1] = 1, 2
    return ids


def _groups(model: InternVL) -> list[FusedProjections]:
    return [g for m in model.modules() for g in getattr(m, "fused_groups", ())]


@pytest.mark.parametrize("lengths", [[12, 7, 5, 10], [3], [1, 1, 2], [20, 19, 20]])
def test_packed_text_equals_padded_text(model: InternVL, lengths: list[int]) -> None:
    for length in (max(lengths), 24):  # padded to the longest, and further (as the official padding to 80)
        ids = _ids(lengths, length)
        with torch.inference_mode():
            padded = model.encode_text(ids, packed=False)
            packed = model.encode_text(ids)
        torch.testing.assert_close(packed, padded, atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("lengths", [[7], [9, 9, 9]])
def test_text_without_padding_runs_unpacked_and_exactly_as_padded(
    model: InternVL, lengths: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    # One query, or equal lengths cut to the longest: nothing to pack, so no Packing is made (its pad and unpad
    # around every layer's attention are pure overhead there) and the answer is the padded path's, bit for bit.
    def no_packing(keep: torch.Tensor) -> None:
        raise AssertionError(f"a batch without padding was packed: {keep.tolist()}")

    ids, longer = _ids(lengths, max(lengths)), _ids(lengths, 24)  # and padded further, as to the official 80
    with torch.inference_mode():
        padded, padded_longer = model.encode_text(ids, packed=False), model.encode_text(longer, packed=False)
        monkeypatch.setattr("internvl_models.qllama.Packing", no_packing)
        assert torch.equal(model.encode_text(ids), padded)
        torch.testing.assert_close(model.encode_text(longer), padded_longer, atol=TOLERANCE, rtol=0)


def test_packed_text_with_ids_of_zero_inside_and_a_leading_zero(model: InternVL) -> None:
    ids = _ids([12, 9, 6], 14)
    ids[0, 4] = 0  # a literal <unk> inside a text: masked as padding, and the feature moves one token left
    ids[1, 2:4] = 0
    with torch.inference_mode():
        torch.testing.assert_close(model.encode_text(ids), model.encode_text(ids, packed=False), atol=TOLERANCE, rtol=0)
        ids[2, 0] = 0  # a row starting with padding: the padded path is taken for the whole batch
        torch.testing.assert_close(model.encode_text(ids), model.encode_text(ids, packed=False), atol=TOLERANCE, rtol=0)


def test_packed_text_matches_each_query_alone(model: InternVL) -> None:
    """A query's feature does not depend on the other queries of its batch (no attention across a pack)."""
    lengths = [9, 4, 13, 6]
    ids = _ids(lengths, 13, seed=1)
    with torch.inference_mode():
        batch = model.encode_text(ids)
        alone = torch.cat([model.encode_text(ids[i : i + 1, :n], packed=False) for i, n in enumerate(lengths)])
    torch.testing.assert_close(batch, alone, atol=TOLERANCE, rtol=0)


def test_fused_projections_equal_separate_ones(model: InternVL) -> None:
    ids, pixels = _ids([8, 5, 11], 11), torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(2))
    fused = InternVL(model.config).eval()
    fused.load_state_dict(model.state_dict())
    fuse_projections(fused)
    assert all(g.weight is not None for g in _groups(fused))
    with torch.inference_mode():
        for mode in ("C", "G"):
            torch.testing.assert_close(
                fused.encode_image(pixels, mode), model.encode_image(pixels, mode), atol=TOLERANCE, rtol=0
            )
        torch.testing.assert_close(fused.encode_text(ids), model.encode_text(ids), atol=TOLERANCE, rtol=0)
    # The checkpoint keys are unchanged: the fused matrix is storage, the named parameters are views of it.
    assert fused.state_dict().keys() == model.state_dict().keys()
    attention = fused.qllama.model.layers[0].self_attn
    assert attention.k_proj.weight.data_ptr() == attention.qkv.weight[attention.q_proj.weight.shape[0] :].data_ptr()


def test_fused_model_moved_or_trained_falls_back_to_separate_layers(model: InternVL) -> None:
    fused = fuse_projections(InternVL(model.config).eval())
    fused.load_state_dict(model.state_dict())  # copies into the views: the fused matrix sees the new weights
    ids = _ids([6, 9], 9)
    with torch.inference_mode():
        expected = model.encode_text(ids)
        torch.testing.assert_close(fused.encode_text(ids), expected, atol=TOLERANCE, rtol=0)
    fused.to(torch.float64)  # new storage for every parameter: the stale fused matrices must not be used
    pixels = torch.randn(1, 3, 56, 56, dtype=torch.float64)
    with torch.inference_mode():
        torch.testing.assert_close(fused.encode_text(ids).float(), expected, atol=TOLERANCE, rtol=0)
        torch.testing.assert_close(
            fused.encode_image(pixels, "G"), copy.deepcopy(model).double().encode_image(pixels, "G")
        )
    assert all(g.weight is None for g in _groups(fused))  # and the stale matrices were let go at first use
    # With autograd on, the separate (trainable) parameters run, and gradients reach them.
    trained = fuse_projections(InternVL(model.config))
    trained.encode_text(ids).sum().backward()
    assert trained.qllama.model.layers[0].self_attn.q_proj.weight.grad is not None


def test_fused_checkpoint_saves_and_loads(model: InternVL, tmp_path: Path) -> None:
    directory = save_internvl(model, model.config, tmp_path / "a")
    loaded = load_internvl(directory, device="cpu")  # fused by the loader
    assert all(g.weight is not None for g in _groups(loaded))
    again = load_internvl(save_internvl(loaded, loaded.config, tmp_path / "b"), device="cpu")
    for (name, a), (_, b) in zip(loaded.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name


def test_sdpa_equals_eager_attention(model: InternVL) -> None:
    ids, pixels = _ids([8, 3], 8), torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        fast = (model.encode_image(pixels, "G"), model.encode_text(ids))
        with eager_attention():
            slow = (model.encode_image(pixels, "G"), model.encode_text(ids, packed=False))
    for a, b in zip(fast, slow):
        torch.testing.assert_close(a, b, atol=TOLERANCE, rtol=0)
