"""Sorting networks for the detector kernel's medians: Batcher's odd-even merge sort, pruned to the middle ranks.

A network is a fixed list of comparators (i < j: row i gets the smaller value), so the kernel runs it down the
columns of a [values x meters] block as vector steps across the meters, with no branch on the data. The first
stages of Batcher's network sort aligned blocks of 16 (or 8) rows on their own; the kernel does those in
registers (``analytics.simd.sort_blocks16``) instead of one comparator at a time through memory, where every
comparator stores two rows. ``network`` says how many leading comparators that replaces.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

SELECT_SLACK = 8  # a pruned network serves any n - SELECT_SLACK to n values (the rest +inf)
BLOCK = 16  # rows of the blocks sorted in registers: 16 rows x 16 meters fill half the AVX-512 registers
SMALL_BLOCK = 8  # and for networks of fewer values (the closed days' groups)


def block_rows(n: int) -> int:
    """Rows of the blocks the kernel sorts in registers for a network of n values (0: none)."""
    return BLOCK if n >= BLOCK else SMALL_BLOCK if n >= SMALL_BLOCK else 0


@lru_cache(maxsize=64)
def _batcher(n: int) -> tuple[tuple[int, int, int], ...]:
    """Comparators (i, j, p) of Batcher's odd-even merge sort for n inputs, in order; p is the merge stage (after
    stage p, aligned blocks of 2p rows are sorted). Padded to a power of two; the padding sits at the end and is
    +inf, so a comparator reaching into it never swaps and is left out.

    Kept once made: a network of a few thousand comparators takes milliseconds of Python to build.
    """
    size = 1
    while size < n:
        size *= 2
    out = []
    p = 1
    while p < size:
        k = p
        while k >= 1:
            for j in range(k % p, size - k, 2 * k):
                for i in range(min(k, size - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p) and i + j + k < n:
                        out.append((i + j, i + j + k, p))
            k //= 2
        p *= 2
    return tuple(out)


def sorting_network(n: int) -> tuple[tuple[int, int], ...]:
    """Comparators (i < j) that sort n values ascending."""
    return tuple((a, b) for a, b, _ in _batcher(n))


@lru_cache(maxsize=64)
def _selection(n: int) -> tuple[tuple[int, int, int], ...]:
    """``_batcher(n)`` pruned from the last comparator back: one is kept when it writes a rank still wanted (the
    middle ranks of n - SELECT_SLACK to n values), and then both of its inputs are wanted. A median needs no full
    sort: ~18% fewer comparators."""
    least = max(n - SELECT_SLACK, 1)
    wanted = set(range((least - 1) // 2, n // 2 + 1))
    kept = []
    for a, b, p in reversed(_batcher(n)):
        if a in wanted or b in wanted:
            kept.append((a, b, p))
            wanted |= {a, b}
    return tuple(reversed(kept))


@lru_cache(maxsize=128)
def network(n: int, pruned: bool) -> tuple[tuple[tuple[int, int], ...], int]:
    """The comparators the kernel runs for n values, and how many of the first ones sorting every full block of
    ``block_rows(n)`` rows replaces.

    Those are the comparators of the stages before blocks of that many rows are merged, within full blocks;
    they go first, then the stages' comparators in the partial last block, then the rest in order (the blocks
    are independent until merged, so this is the same network). A full sort of each block in their place is
    sound for the pruned network too: the comparators pruned away touch only rows no wanted rank depends on,
    so running them as well changes nothing that matters.
    """
    comps = _selection(n) if pruned else _batcher(n)
    rows = block_rows(n)
    full = rows * (n // rows) if rows else 0
    in_blocks = [(a, b) for a, b, p in comps if p < rows and b < full]
    rest = [(a, b) for a, b, p in comps if not (p < rows and b < full)]
    return tuple(in_blocks + rest), len(in_blocks)


@lru_cache(maxsize=32)
def kernel_networks(sizes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The kernel's networks for these numbers of values, each in full and pruned, one after the other: the
    comparators' upper and lower rows, where each network starts (and the end), how many of its first comparators
    the block sorts replace. Kept once made: a detector pass should not spend milliseconds of Python on them.
    """
    nets = [network(n, pruned) for n in sizes for pruned in (False, True)]
    pairs = np.array([p for net, _ in nets for p in net], dtype=np.int64).reshape(-1, 2)
    starts = np.cumsum([0] + [len(net) for net, _ in nets]).astype(np.int64)
    skips = np.array([skip for _, skip in nets], dtype=np.int64)
    out = np.ascontiguousarray(pairs[:, 0]), np.ascontiguousarray(pairs[:, 1]), starts, skips
    for arr in out:
        arr.flags.writeable = False  # shared by every pass
    return out
