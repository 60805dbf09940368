"""Removals from faiss's fast-scan IVF lists (`IndexIVFPQFastScan`) without spoiling the vectors added after them.

A fast-scan list holds its 4-bit codes in blocks of 32 vectors, two vectors' codes to a byte. faiss writes the codes
of added vectors into the free slots of the last block without clearing them first (`pq4_pack_codes_range` "assumes
allocated entries are 0 on input"), and a removal (faiss 1.15.1, `BlockInvertedLists::remove_ids`) moves the list's
last vectors into the freed slots and shrinks the list, but leaves the old codes in the slots at the end of the last
block. A vector later added into such a slot got its code merged with the old one: in a test, a vector removed and
added again scored -0.007 against itself instead of 0.87 and was never found. So after every removal the slots past
the end of each shortened list are zeroed here (`remove_ids`).

Which lists shortened: every list's size read before and after costs two SWIG calls a list (4.4 ms at 4,096 lists,
~70 ms at 65,536). Given the removed vectors (the re-rank copy's float16 rows) of a small removal, the lists they
were assigned to are found with the coarse quantizer and only those are read; if their sizes do not account for
every removed vector (a float16 row can fall on the other side of a boundary between two lists), the slots past the
end of every list are zeroed, which is idempotent. Assigning costs ~0.1 us per removed value and list
(`HINT_MAX_VALUES`): 32 ids at d = 64 0.26 ms, at d = 768 3.3 ms, against 4.4 ms of reads, at 4,096 lists.
"""

from __future__ import annotations

from collections.abc import Callable

import faiss
import numpy as np

# Removed ids x dimensions up to which assigning the removed vectors to lists costs less than reading every list's
# size twice (both grow with the number of lists; measured equal near 50,000, see above).
HINT_MAX_VALUES = 32_768


def is_fast_scan(index: faiss.Index | None) -> bool:
    return index is not None and isinstance(faiss.downcast_index(index), faiss.IndexIVFFastScan)


def remove_ids(index: faiss.Index, ids: np.ndarray, vectors: Callable[[], np.ndarray] | None = None) -> None:
    """Remove `ids` from an IVF index; from a fast-scan one, then zero the slots it freed in every shortened list.
    `vectors()`: the removed ids' vectors, or close copies, which tell the lists to look at (see above); called only
    for a removal small enough to pay."""
    if not is_fast_scan(index):
        index.remove_ids(faiss.IDSelectorBatch(ids))
        return
    if vectors is None or len(ids) * index.d > HINT_MAX_VALUES:
        lists = np.arange(index.nlist)
    else:
        _, assigned = index.quantizer.search(np.ascontiguousarray(vectors(), dtype=np.float32), 1)
        lists = np.unique(assigned[assigned >= 0])
    before = _list_sizes(index, lists)
    removed = index.remove_ids(faiss.IDSelectorBatch(ids))
    after = _list_sizes(index, lists)
    _clear_vacated_slots(index, lists[after != before])
    if int((before - after).sum()) != removed:  # a removed vector sat in a list its copy did not point to
        _clear_vacated_slots(index, np.arange(index.nlist))


def _list_sizes(index: faiss.Index, lists: np.ndarray) -> np.ndarray:
    invlists = index.invlists
    return np.fromiter((invlists.list_size(i) for i in lists.tolist()), dtype=np.int64, count=len(lists))


def _clear_vacated_slots(index: faiss.Index, lists: np.ndarray) -> None:
    """Zero the code slots past the end of each of `lists` (list numbers) in its last block."""
    fast = faiss.downcast_index(index)
    blocks = faiss.downcast_InvertedLists(fast.invlists)
    per_block, block_bytes = int(blocks.n_per_block), int(blocks.block_size)
    owned = _slot_bytes(fast, per_block, block_bytes)
    for number in lists.tolist():
        size = blocks.list_size(number)
        used = size % per_block
        if not used:  # a whole number of blocks: no slot is vacant
            continue
        codes = faiss.rev_swig_ptr(blocks.get_codes(number), (size // per_block + 1) * block_bytes)
        codes[-block_bytes:] &= ~np.bitwise_or.reduce(owned[used:], axis=0)


def _slot_bytes(index: faiss.Index, per_block: int, block_bytes: int) -> np.ndarray:
    """(per_block, block_bytes) bit masks: which bits of a block hold the codes of its i-th slot, found by packing
    an all-ones code into each slot of an empty block with the index's own packer."""
    packer = index.get_CodePacker()
    ones = np.full(packer.code_size, 0xFF, dtype=np.uint8)
    masks = np.zeros((per_block, 1, block_bytes), dtype=np.uint8)
    for slot in range(per_block):
        packer.pack_1(ones, slot, masks[slot])
    return masks[:, 0]
