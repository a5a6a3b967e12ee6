"""Greedy near-duplicate removal over 64-bit hashes, fast enough for tens of millions of patches.

The result is the original's greedy exemplar selection: walk the hashes in a random order (drawn from ``seed``)
or in ``order``; the first hash not yet removed becomes an exemplar and removes every remaining hash within
Hamming distance ``max_distance``. It equals a plain quadratic loop for the same order; only the search differs.

How the search stays fast:

* A multi-index table. The 64 bits are split into m blocks of at most 16 bits, and each block i gets a radius
  t_i with sum(t_i) >= max_distance + 1 - m. Two hashes within max_distance then agree within t_i bits on at
  least one block i (pigeonhole), so only buckets whose block value is within t_i of the query's are scanned.
  m and the radii are chosen from a cost model for the number of hashes still standing (more blocks: fewer
  probes, fuller buckets); the index is rebuilt with the new plan when that number has halved and the plan
  changes.
* The walk is speculative in chunks: the next K hashes still standing are looked up at once, in parallel
  threads, against an index of the hashes still standing; then a short sequential pass applies the greedy rule
  to the chunk in order. A query removed by an earlier exemplar of its own chunk is wasted work, never a
  wrong answer. K minimises the cost per useful query: a chunk has a fixed cost (below) and its waste grows
  with K. The pair buffers grow with what chunks find, and chunks shrink only past a cap (e.g. many identical
  hashes), so memory stays O(N).
* Chunks are searched bucket-major: the chunk's queries are grouped by block value (kept as rows of 16-bit
  words); every bucket is read once, the query groups within the block's radius are gathered into one buffer in
  whole-vector copies, and a vectorised pass finds each gathered query's nearest entry. The index stores each
  hash as four rows of 16-bit words and a 16-bit block's own word is left out (its distance is the mask's
  weight), so one AVX-512 register compares 32 words. The queries whose nearest entry is within the distance
  (the hits) go into the lanes of one register, and the bucket is read once more for all of them: the exact
  pass that reports pairs. Small chunks (after an overflow) probe query by query.
* A parity split of the plan's busiest block. When the radii are tight (sum(t_i) == max_distance + 1 - m, as
  plan_blocks makes them), a pair that only block b's full-weight masks find differs in exactly t_i + 1 bits
  in every other block, so the parities of those blocks' differences are known. Block b's buckets and query
  groups are split by up to 3 such parities, and its full-weight masks (560 of the 1,108 of the 4 x 16-bit
  plan) compare a part of a bucket with the matching part of each group only: 1 / 2**s of the comparisons for
  2**s times the lookups. Each chunk picks s from the cost model (large buckets and groups: 30M hashes and up).
* The search names hashes by walk rank throughout: the hashes are gathered into walk order once, and queries,
  index entries and pairs are walk ranks, so building the index, grouping a chunk and applying the greedy rule
  read hashes in forward passes (items are looked up only to write the result). Which hashes are removed is one
  bit per walk rank (n / 8 bytes, so it stays in cache). Within a (sub-)bucket entries are sorted by rank.
* Stale entries (behind the walk or removed) are dropped in place, bucket by bucket, by the bucket-major search
  itself as it first reads each bucket (or by a pass of its own before a query-major chunk), once the
  comparisons spent on them since the last compaction add up to a compaction's cost.

bench/bench_dedup.py measures it; bench/RESULTS.md has the figures (10M, 30M and 100M clustered hashes).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numba
import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.extending import intrinsic

from cellemnet.constants import DEFAULT_MAX_HAMMING

_MAX_BLOCK_BITS = 16
_PROBE_COST = 40.0  # one bucket lookup (a likely cache miss) relative to comparing with one bucket entry
_BUFFER_ENTRIES = 1 << 20  # neighbour pair slots per thread and chunk (8 MiB per thread) to start with
_MAX_BUFFER_ENTRIES = 1 << 24  # the most they grow to before chunks shrink instead (128 MiB per thread)
_GATHER = 8192  # queries gathered per bucket before they are compared (~200 KiB per thread: stays in L2)
_COPY = 8  # query slots copied at once (one vector move), whatever the group's size
_LANES = 32  # 16-bit words per AVX-512 register: the gathered queries are padded to a multiple of it
# A bucket-major chunk's fixed cost, in comparisons: 150 per (bucket, mask) pair and 150 per index entry of each
# block. Fitted to the first chunks at 10M and 100M clustered hashes (fixed costs of ~0.43 s and ~1.85 s).
_BATCHED_PROBE_COST = 150.0
_ENTRY_VISIT_COST = 150.0
_KEEP = 256  # entries whose flags a compaction reads before it moves them
_COMPACT_COST = 50.0  # compacting one entry of one block, in comparisons (a scalar pass: ~10 cycles)
_NO_RANKS = np.empty(0, dtype=np.int32)
_NO_WORDS = np.empty((4, 0), dtype=np.uint16)


@intrinsic
def _popcount(typingctx, value):
    sig = types.uint64(types.uint64)

    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])

    return sig, codegen


@intrinsic
def _popcount_int(typingctx, value):
    """Population count in the argument's own integer type (so 16-bit words vectorise 32 to a register)."""
    sig = value(value)

    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])

    return sig, codegen


@intrinsic
def _trailing_zeros(typingctx, value):
    """Index of the lowest set bit (value != 0)."""
    sig = value(value)

    def codegen(context, builder, signature, args):
        return builder.cttz(args[0], ir.Constant(ir.IntType(1), 1))

    return sig, codegen


@numba.njit(cache=True, inline="always")
def _word_hash(words, e):
    """The 64-bit hash stored as four 16-bit words in column e of a (4, n) array."""
    return (np.uint64(words[0, e]) | (np.uint64(words[1, e]) << np.uint64(16))
            | (np.uint64(words[2, e]) << np.uint64(32)) | (np.uint64(words[3, e]) << np.uint64(48)))


@numba.njit(cache=True, inline="always")
def _set_words(words, e, h):
    words[0, e] = np.uint16(h & np.uint64(0xFFFF))
    words[1, e] = np.uint16((h >> np.uint64(16)) & np.uint64(0xFFFF))
    words[2, e] = np.uint16((h >> np.uint64(32)) & np.uint64(0xFFFF))
    words[3, e] = np.uint16(h >> np.uint64(48))


# ------------------------------------------------------------------------------------------------ block plan


@dataclass(frozen=True)
class BlockPlan:
    """Blocks (shift, bits) of the 64-bit hash and the radius searched in each (-1: block not indexed)."""

    shifts: tuple[int, ...]
    bits: tuple[int, ...]
    radii: tuple[int, ...]
    brute_force: bool = False

    @property
    def probes(self) -> int:
        return sum(_ball(b, r) for b, r in zip(self.bits, self.radii))


def _ball(bits: int, radius: int) -> int:
    """Number of bit patterns of ``bits`` bits within Hamming distance ``radius`` of a given one."""
    return sum(math.comb(bits, k) for k in range(0, min(radius, bits) + 1)) if radius >= 0 else 0


@functools.lru_cache(maxsize=64)
def plan_blocks(max_distance: int, n: int) -> BlockPlan:
    """Cheapest block split for ``n`` hashes under a simple cost model (probes + expected bucket entries)."""
    best: tuple[float, BlockPlan] | None = None
    for m in range(4, 17):
        bits = [64 // m + (1 if i < 64 % m else 0) for i in range(m)]
        shifts = [sum(bits[:i]) for i in range(m)]
        if max(bits) > _MAX_BLOCK_BITS:
            continue
        factor = [_PROBE_COST + n / 2.0**b for b in bits]
        radii = [-1] * m
        # add one to the radius with the cheapest extra cost until the pigeonhole condition holds
        for _ in range(max_distance + 1):
            costs = [
                (_ball(bits[i], radii[i] + 1) - _ball(bits[i], radii[i])) * factor[i]
                if radii[i] < bits[i] else math.inf
                for i in range(m)
            ]
            i = int(np.argmin(costs))
            radii[i] += 1
        cost = sum(_ball(b, r) * f for b, r, f in zip(bits, radii, factor))
        if best is None or cost < best[0]:
            best = (cost, BlockPlan(tuple(shifts), tuple(bits), tuple(radii)))
    assert best is not None
    brute_cost = float(max(n, 1))
    if best[0] >= brute_cost or max_distance >= 64:
        return BlockPlan((0,), (64,), (max_distance,), brute_force=True)
    return best[1]


def _mask_tables(plan: BlockPlan, split_block: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All XOR masks of each block (weight <= radius), concatenated, with start offsets per block, and per block
    where its masks restricted by the parity split begin (its end for every block but the split one, whose
    masks of full weight come last)."""
    masks: list[int] = []
    starts = [0]
    tops = []
    for b, (bits, radius) in enumerate(zip(plan.bits, plan.radii)):
        n_top = 0
        if not plan.brute_force and radius >= 0:
            values = [v for v in range(1 << bits) if v.bit_count() <= radius]  # by value: nearby groups
            if b == split_block:
                values.sort(key=lambda v: v.bit_count() == radius)  # (a stable sort: still by value within)
                n_top = sum(v.bit_count() == radius for v in values)
            masks.extend(values)
        tops.append(len(masks) - n_top)
        starts.append(len(masks))
    return np.array(masks, dtype=np.int64), np.array(starts, dtype=np.int64), np.array(tops, dtype=np.int64)


_MAX_PARITY_BITS = 3  # at most 2 ** 3 sub-buckets per bucket of the split block


def _parity_bits(plan: BlockPlan, n: int) -> int:
    """Parity bits s of an index of n hashes. A chunk can use up to s of them; each one halves the comparisons of
    the split block's full-weight masks and doubles their lookups, and the group offsets grow 2**s-fold (they
    stop fitting in cache). So s is the most that pays for chunks of ~8 queries per group (2**19 queries):
    2**s <= sqrt(comparisons per lookup / a lookup's cost)."""
    if plan.brute_force:
        return 0
    per_lookup = 8.0 * n / 2.0 ** max(plan.bits)
    return int(min(_MAX_PARITY_BITS, max(0, math.floor(0.5 * math.log2(max(per_lookup / _BATCHED_PROBE_COST, 1.0))))))


def parity_split(plan: BlockPlan, max_distance: int, parity_bits: int = _MAX_PARITY_BITS) -> np.ndarray:
    """The parity split of a tight plan, as [block, parity bits s, target, (shift, bits) of s other blocks].

    When the radii are tight (sum(t_i) == max_distance + 1 - m), a pair found through block b with the full
    weight t_b, and through no other block, differs in exactly t_i + 1 bits in every other block i: it differs in
    at least t_i + 1 there (no other block finds it) and in at most max_distance - t_b = sum over i != b of
    (t_i + 1) in all of them together. So the parity of each other block's difference is known. Block b's
    buckets are split by the parities of s other blocks, and its full-weight masks read only the sub-bucket
    with the known parities: 1 / 2**s of the entries (its full-weight masks are most of the plan's: 560 of the
    1,108 of the 4 x 16-bit plan at distance 12). Block b then reports a full-weight pair only with those
    parities (_caught_by), so that every pair within max_distance is still caught, and reported, by one block.
    The block split is the one with the most full-weight masks. Block -1: no split (a plan with slack, brute
    force, or a single block)."""
    none = np.array([-1, 0, 0], dtype=np.int64)
    m = len(plan.bits)
    if plan.brute_force or m < 2 or parity_bits <= 0 or sum(plan.radii) != max_distance + 1 - m:
        return none
    block = max((b for b in range(m) if plan.radii[b] >= 0), key=lambda b: math.comb(plan.bits[b], plan.radii[b]),
                default=-1)
    if block < 0:
        return none
    others = [i for i in range(m) if i != block][: min(parity_bits, _MAX_PARITY_BITS)]
    target = sum(((plan.radii[i] + 1) & 1) << j for j, i in enumerate(others))
    out = [block, len(others), target]
    for i in others:
        out += [plan.shifts[i], plan.bits[i]]
    return np.array(out, dtype=np.int64)


# ------------------------------------------------------------------------------------------------ kernels


@numba.njit(cache=True, inline="always")
def _parity_key(h, split):
    """Bit j: the parity of the j-th block named by the parity split, in the hash (or difference) h."""
    p = np.int64(0)
    for j in range(split[1]):
        m = np.uint64((np.int64(1) << split[4 + 2 * j]) - 1)
        p |= np.int64(_popcount((h >> np.uint64(split[3 + 2 * j])) & m) & np.uint64(1)) << j
    return p


@numba.njit(cache=True, inline="always")
def _block_key(h, b, shifts, bits, split):
    """The bucket of hash h in block b: the block's value, followed by the parity key in the split block."""
    v = np.int64((h >> np.uint64(shifts[b])) & np.uint64((np.int64(1) << bits[b]) - 1))
    if b == split[0]:
        return (v << split[1]) | _parity_key(h, split)
    return v


@numba.njit(cache=True, inline="always")
def _caught_by(x, b, radii, bits, shifts, split):
    """Whether block b finds the pair with difference bits x: within its radius, and at the full radius in the
    split block only with the parities the split expects (parity_split)."""
    w = np.int64(_popcount((x >> np.uint64(shifts[b])) & np.uint64((np.int64(1) << bits[b]) - 1)))
    if w != radii[b]:
        return w < radii[b]
    return b != split[0] or _parity_key(x, split) == split[2]


@numba.njit(cache=True, inline="always")
def _found_in_earlier_block(x, b, radii, bits, shifts, split):
    """True when the pair with difference bits x is also found through a block before b."""
    for b2 in range(b):
        if radii[b2] >= 0 and _caught_by(x, b2, radii, bits, shifts, split):
            return True
    return False


@numba.njit(cache=True, inline="always")
def _first_found_here(x, b, radii, bits, shifts, split):
    """True when block b is the first block that finds the pair with difference bits x, so that each pair is
    reported once. Callers ask this before the walk ranks: it needs no memory reads, and it turns away most
    hits (a close pair is found through most blocks, a query finds itself through all of them). The split block
    can find pairs it does not catch (when a chunk reads its buckets whole): a later block reports those."""
    if b == split[0] and not _caught_by(x, b, radii, bits, shifts, split):
        return False
    return not _found_in_earlier_block(x, b, radii, bits, shifts, split)


@numba.njit(cache=True, inline="always")
def _append_pair(qi, item, out_q, out_r, fill, cap):
    """Append the pair (chunk position qi, item); returns the new fill, or -1 when the buffer is full."""
    if fill >= cap:
        return -1
    out_q[fill] = qi
    out_r[fill] = item
    return fill + 1


@numba.njit(cache=True, inline="always")
def _sub_bits(b, split):
    """Parity bits in block b's bucket keys: the split's in the split block, none elsewhere."""
    return split[1] if b == split[0] else 0


@numba.njit(cache=True, inline="always")
def _key_bits(b, bits, split):
    """Bits of block b's bucket keys (the split block's carry the parity key too)."""
    return bits[b] + _sub_bits(b, split)


@numba.njit(cache=True)
def _build_block(active_hashes, active_ranks, b, shifts, bits, split, off, base, entry_ranks, entry_words, tmp_ranks,
                 tmp_hashes):
    """Counting sort of the active hashes by one block's bucket key into entries base.. of the shared arrays.

    Two passes (high half of the key, then the whole key within each high group), so the scattered writes
    of each pass go to a few hundred streams instead of one random place per hash.
    """
    n = active_hashes.shape[0]
    n_bits = _key_bits(b, bits, split)
    nb = np.int64(1) << n_bits
    low_bits = n_bits // 2
    n_high = np.int64(1) << (n_bits - low_bits)
    off[: nb + 1] = 0
    for i in range(n):
        off[_block_key(active_hashes[i], b, shifts, bits, split) + 1] += 1
    for k in range(nb):
        off[k + 1] += off[k]
    high_fill = np.empty(n_high, dtype=np.int64)
    for g in range(n_high):
        high_fill[g] = off[g << low_bits]
    for i in range(n):
        h = active_hashes[i]
        g = _block_key(h, b, shifts, bits, split) >> low_bits
        slot = high_fill[g]
        high_fill[g] += 1
        tmp_hashes[slot] = h
        tmp_ranks[slot] = active_ranks[i]
    fill = off[:nb].copy()
    for i in range(n):  # tmp is grouped by the high half: these writes stay within one group's range at a time
        h = tmp_hashes[i]
        key = _block_key(h, b, shifts, bits, split)
        slot = base + fill[key]
        fill[key] += 1
        entry_ranks[slot] = tmp_ranks[i]
        _set_words(entry_words, slot, h)


@numba.njit(cache=True, parallel=True)
def _build_index(active, walk_hashes, shifts, bits, radii, split, bucket_base, entry_base, offsets, entry_ranks,
                 entry_words, n_threads):
    """Counting-sort the active hashes (walk ranks, ascending) into one bucket array per indexed block (blocks in
    parallel)."""
    n = active.shape[0]
    active_hashes = np.empty(n, dtype=np.uint64)
    active_ranks = np.empty(n, dtype=np.int32)
    for i in prange(n):  # read the hashes once, for all blocks (in walk order: a forward pass)
        active_hashes[i] = walk_hashes[active[i]]
        active_ranks[i] = active[i]
    for t in prange(n_threads):
        tmp_ranks = np.empty(n, dtype=np.int32)
        tmp_hashes = np.empty(n, dtype=np.uint64)
        for b in range(t, shifts.shape[0], n_threads):
            if radii[b] >= 0:
                _build_block(active_hashes, active_ranks, b, shifts, bits, split, offsets[bucket_base[b] :],
                             entry_base[b], entry_ranks, entry_words, tmp_ranks, tmp_hashes)


@numba.njit(cache=True)
def _sort_queries_by_block(queries, walk_hashes, shifts, bits, radii):
    """For each indexed block, the chunk positions of the queries sorted by that block's value (for locality)."""
    k = queries.shape[0]
    out = np.empty((shifts.shape[0], k), dtype=np.int64)
    keys = np.empty(k, dtype=np.int64)
    for b in range(shifts.shape[0]):
        if radii[b] < 0:
            continue
        mask = np.uint64((np.int64(1) << bits[b]) - 1)
        shift = np.uint64(shifts[b])
        for i in range(k):
            keys[i] = np.int64((walk_hashes[queries[i]] >> shift) & mask)
        out[b] = np.argsort(keys)
    return out


@numba.njit(cache=True)
def _probe_block(
    b, qi, q, walk_hashes, order, max_distance, shifts, bits, radii, split, masks, mask_starts, mask_tops,
    bucket_base, entry_base, offsets, ends, entry_ranks, entry_words, out_q, out_r, fill, cap,
):
    """Append (qi, r) for each standing hash r after the query (walk rank q), within max_distance, found through
    block b.

    A pair is reported through the first block that catches it only, so it is reported once. In the split
    block a bucket is its 2**s sub-buckets (kept contiguous); the full-weight masks read one of them.
    Returns the new fill, or -1 when the buffer is full.
    """
    h = walk_hashes[q]
    mask = np.uint64((np.int64(1) << bits[b]) - 1)
    key = np.int64((h >> np.uint64(shifts[b])) & mask)
    sub = _sub_bits(b, split)
    wanted = (_parity_key(h, split) ^ split[2]) if sub else 0  # the sub-bucket a full-weight mask reads
    obase = bucket_base[b]
    ebase = entry_base[b]
    for j in range(mask_starts[b], mask_starts[b + 1]):
        first = obase + ((key ^ masks[j]) << sub)
        if j < mask_tops[b]:
            lo = ebase + offsets[first]
            hi = ebase + ends[first + (np.int64(1) << sub) - 1]
        else:
            lo = ebase + offsets[first + wanted]
            hi = ebase + ends[first + wanted]
        for e in range(lo, hi):
            x = h ^ _word_hash(entry_words, e)
            if _popcount(x) <= max_distance:
                er = entry_ranks[e]
                if er > q and _first_found_here(x, b, radii, bits, shifts, split):
                    fill = _append_pair(qi, er, out_q, out_r, fill, cap)
                if fill < 0:
                    return -1
    return fill


@numba.njit(cache=True)
def _probe_brute(qi, q, walk_hashes, removed_bits, max_distance, active, out_q, out_r, fill, cap):
    h = walk_hashes[q]
    for i in range(active.shape[0]):
        r = active[i]
        if _popcount(h ^ walk_hashes[r]) <= max_distance:
            if r <= q or _is_removed(removed_bits, r):
                continue
            fill = _append_pair(qi, r, out_q, out_r, fill, cap)
            if fill < 0:
                return -1
    return fill


@numba.njit(cache=True, parallel=True)
def _search_chunk(
    queries, sorted_by_block, n_threads, walk_hashes, removed_bits, order, max_distance, brute, active,
    shifts, bits, radii, split, masks, mask_starts, mask_tops, bucket_base, entry_base, offsets, ends, entry_ranks,
    entry_words, out_q, out_r, fills,
):
    """All (query, later standing neighbour) pairs of a chunk; thread t writes to out_q[t], out_r[t].

    Each thread takes a contiguous range of the queries sorted by a block's value, so that neighbouring
    queries probe neighbouring buckets. fills[t] = -1 when thread t ran out of buffer.
    """
    k = queries.shape[0]
    cap = out_q.shape[1]
    for t in prange(n_threads):
        lo = k * t // n_threads
        hi = k * (t + 1) // n_threads
        fill = 0
        if brute:
            for i in range(lo, hi):
                fill = _probe_brute(i, queries[i], walk_hashes, removed_bits, max_distance, active, out_q[t], out_r[t],
                                    fill, cap)
                if fill < 0:
                    break
        else:
            for b in range(shifts.shape[0]):
                if radii[b] < 0:
                    continue
                for i in range(lo, hi):
                    qi = sorted_by_block[b, i]
                    fill = _probe_block(
                        b, qi, queries[qi], walk_hashes, order, max_distance, shifts, bits, radii, split,
                        masks, mask_starts, mask_tops, bucket_base, entry_base, offsets, ends, entry_ranks,
                        entry_words, out_q[t], out_r[t], fill, cap,
                    )
                    if fill < 0:
                        break
                if fill < 0:
                    break
        fills[t] = fill


@numba.njit(cache=True, parallel=True)
def _group_queries(queries, walk_hashes, shifts, bits, radii, split, max_groups):
    """Per indexed block, the chunk's queries grouped by bucket key (the block's value, and the parity key in the
    split block): offsets, hashes as rows of 16-bit words, chunk positions and walk ranks (blocks in parallel)."""
    k = queries.shape[0]
    n_blocks = shifts.shape[0]
    qoffs = np.zeros((n_blocks, max_groups + 1), dtype=np.int64)
    qwords = np.zeros((n_blocks, 4, k + _COPY), dtype=np.uint16)  # padding read by the whole-slot copies
    qpos = np.empty((n_blocks, k), dtype=np.int64)
    qranks = np.empty((n_blocks, k), dtype=np.int64)
    chunk_hashes = np.empty(k, dtype=np.uint64)
    for i in range(k):
        chunk_hashes[i] = walk_hashes[queries[i]]
    for b in prange(n_blocks):
        if radii[b] < 0:
            continue
        nb = np.int64(1) << _key_bits(b, bits, split)
        off = qoffs[b]
        for i in range(k):
            off[_block_key(chunk_hashes[i], b, shifts, bits, split) + 1] += 1
        for v in range(nb):
            off[v + 1] += off[v]
        fill = off[:nb].copy()
        for i in range(k):
            h = chunk_hashes[i]
            v = _block_key(h, b, shifts, bits, split)
            _set_words(qwords[b], fill[v], h)
            qpos[b, fill[v]] = i
            qranks[b, fill[v]] = queries[i]
            fill[v] += 1
    return qoffs, qwords, qpos, qranks


@numba.njit(cache=True)
def _nearest_3_words(n_vec, ga, gb, gc, nearest, ea, eb, ec, elo, ehi):
    """nearest[i] = min over entries elo..ehi of the distance on three 16-bit words (the block's own word left
    out: its distance is the mask's weight). Vectorised over the gathered queries (n_vec whole registers, so
    there is no remainder loop), four entries at a time."""
    n = _LANES * n_vec
    for i in range(n):
        nearest[i] = 64
    e = elo
    while e + 4 <= ehi:
        a0, a1, a2, a3 = ea[e], ea[e + 1], ea[e + 2], ea[e + 3]
        b0, b1, b2, b3 = eb[e], eb[e + 1], eb[e + 2], eb[e + 3]
        c0, c1, c2, c3 = ec[e], ec[e + 1], ec[e + 2], ec[e + 3]
        for i in range(n):
            x = ga[i]
            y = gb[i]
            z = gc[i]
            d0 = _popcount_int(x ^ a0) + _popcount_int(y ^ b0) + _popcount_int(z ^ c0)
            d1 = _popcount_int(x ^ a1) + _popcount_int(y ^ b1) + _popcount_int(z ^ c1)
            d2 = _popcount_int(x ^ a2) + _popcount_int(y ^ b2) + _popcount_int(z ^ c2)
            d3 = _popcount_int(x ^ a3) + _popcount_int(y ^ b3) + _popcount_int(z ^ c3)
            nearest[i] = min(min(nearest[i], min(d0, d1)), min(d2, d3))
        e += 4
    while e < ehi:
        a0, b0, c0 = ea[e], eb[e], ec[e]
        for i in range(n):
            d0 = _popcount_int(ga[i] ^ a0) + _popcount_int(gb[i] ^ b0) + _popcount_int(gc[i] ^ c0)
            nearest[i] = min(nearest[i], d0)
        e += 1


@numba.njit(cache=True)
def _nearest_4_words(n_vec, gw, nearest, ew, elo, ehi):
    """As _nearest_3_words over all four words (blocks that do not cover one whole word)."""
    ga, gb, gc, gd = gw[0], gw[1], gw[2], gw[3]
    ea, eb, ec, ed = ew[0], ew[1], ew[2], ew[3]
    n = _LANES * n_vec
    for i in range(n):
        nearest[i] = 64
    e = elo
    while e + 2 <= ehi:
        a0, a1, b0, b1 = ea[e], ea[e + 1], eb[e], eb[e + 1]
        c0, c1, f0, f1 = ec[e], ec[e + 1], ed[e], ed[e + 1]
        for i in range(n):
            x = ga[i]
            y = gb[i]
            z = gc[i]
            u = gd[i]
            d0 = _popcount_int(x ^ a0) + _popcount_int(y ^ b0) + _popcount_int(z ^ c0) + _popcount_int(u ^ f0)
            d1 = _popcount_int(x ^ a1) + _popcount_int(y ^ b1) + _popcount_int(z ^ c1) + _popcount_int(u ^ f1)
            nearest[i] = min(nearest[i], min(d0, d1))
        e += 2
    while e < ehi:
        a0, b0, c0, f0 = ea[e], eb[e], ec[e], ed[e]
        for i in range(n):
            d0 = (_popcount_int(ga[i] ^ a0) + _popcount_int(gb[i] ^ b0) + _popcount_int(gc[i] ^ c0)
                  + _popcount_int(gd[i] ^ f0))
            nearest[i] = min(nearest[i], d0)
        e += 1


@numba.njit(cache=True)
def _flush_gathered(
    n_gathered, gathered_w, gathered_i, thresholds, nearest, hits, hit_words, hit_ranks, elo, ehi, b, own, order,
    shifts, bits, radii, split, max_distance, entry_ranks, entry_words, qword, qpos, qrank, out_q, out_r,
    fill, cap,
):
    """Compare the gathered queries (rows of 16-bit words, their slots in the chunk's grouping and thresholds)
    with the bucket's entries elo..ehi; append the pairs within max_distance.

    The first pass keeps only each query's nearest distance, in a loop over the gathered queries that the
    compiler vectorises (hundreds of queries against a few dozen entries, 32 words to a register). A block that
    is one whole word (own >= 0) leaves that word out: its distance is the weight of the group's mask, taken off
    the group's threshold. Only the queries whose nearest entry is within their threshold (the hits, found a
    register at a time) go on to the exact pass that reports pairs.
    """
    n_vec = (n_gathered + _LANES - 1) // _LANES  # whole registers
    for i in range(n_gathered, _LANES * n_vec):
        thresholds[i] = -1  # padding slots: never a hit (their words are whatever was there)
    if own >= 0:
        w1, w2, w3 = (own + 1) % 4, (own + 2) % 4, (own + 3) % 4
        _nearest_3_words(n_vec, gathered_w[0], gathered_w[1], gathered_w[2], nearest, entry_words[w1],
                         entry_words[w2], entry_words[w3], elo, ehi)
    else:
        _nearest_4_words(n_vec, gathered_w, nearest, entry_words, elo, ehi)
    nh = 0
    for r in range(n_vec):
        base = r * _LANES
        hit = False
        for lane in range(_LANES):  # one vector compare per register: most registers hold no hit
            hit |= np.int16(nearest[base + lane]) <= thresholds[base + lane]
        if hit:
            for i in range(base, base + _LANES):
                if np.int16(nearest[i]) <= thresholds[i]:
                    hits[nh] = gathered_i[i]
                    nh += 1
    if nh == 0:
        return fill
    return _exact_pass(nh, hits, hit_words, hit_ranks, elo, ehi, b, order, shifts, bits, radii, split,
                       max_distance, entry_ranks, entry_words, qword, qpos, qrank, out_q, out_r, fill, cap)


@numba.njit(cache=True)
def _exact_pass(
    nh, hits, hit_words, hit_ranks, elo, ehi, b, order, shifts, bits, radii, split, max_distance,
    entry_ranks, entry_words, qword, qpos, qrank, out_q, out_r, fill, cap,
):
    """Report the pairs within max_distance between the bucket's entries elo..ehi and the hit queries (their
    slots in the chunk's grouping by block b).

    The hits (a few in a bucket) go into the lanes of one register; each entry is then compared with all of
    them at once, and only an entry within max_distance of one of them is looked at further. So a bucket's
    entries are read once for all its hits instead of once per hit."""
    e0, e1, e2, e3 = entry_words[0], entry_words[1], entry_words[2], entry_words[3]
    h0, h1, h2, h3, dist = hit_words[0], hit_words[1], hit_words[2], hit_words[3], hit_words[4]
    limit = np.uint16(max_distance)
    for c in range(0, nh, _LANES):
        m = min(_LANES, nh - c)
        for k in range(_LANES):  # independent reads of the hits' words and ranks, done once per hit
            gi = hits[c + min(k, m - 1)]  # spare lanes repeat the last hit: they change no minimum
            h0[k] = qword[0, gi]
            h1[k] = qword[1, gi]
            h2[k] = qword[2, gi]
            h3[k] = qword[3, gi]
            hit_ranks[k] = qrank[gi]
        for e in range(elo, ehi):
            a0, a1, a2, a3 = e0[e], e1[e], e2[e], e3[e]
            near = False  # any hit within max_distance: one vector compare
            for k in range(_LANES):
                d = np.uint16(_popcount_int(h0[k] ^ a0) + _popcount_int(h1[k] ^ a1) + _popcount_int(h2[k] ^ a2)
                              + _popcount_int(h3[k] ^ a3))
                dist[k] = d
                near |= d <= limit
            if not near:
                continue
            eh = _word_hash(entry_words, e)
            lanes = np.uint32(0)  # bit k: hit k is within max_distance
            for k in range(_LANES):
                lanes |= np.uint32(dist[k] <= limit) << np.uint32(k)
            lanes &= np.uint32((np.uint64(1) << np.uint64(m)) - np.uint64(1))
            while lanes:
                k = _trailing_zeros(lanes)
                lanes &= lanes - np.uint32(1)
                hq = (np.uint64(h0[k]) | (np.uint64(h1[k]) << np.uint64(16)) | (np.uint64(h2[k]) << np.uint64(32))
                      | (np.uint64(h3[k]) << np.uint64(48)))
                if not _first_found_here(hq ^ eh, b, radii, bits, shifts, split):
                    continue
                er = entry_ranks[e]
                if er <= hit_ranks[k]:
                    continue
                fill = _append_pair(qpos[hits[c + k]], er, out_q, out_r, fill, cap)
                if fill < 0:
                    return -1
    return fill


@numba.njit(cache=True, inline="always")
def _copy_slots(dst, at, src, lo):
    """dst[at:at + _COPY] = src[lo:lo + _COPY] (8 slots). All loads come before the stores and the indices are
    unsigned (no wraparound checks), so that it compiles to one vector load and one vector store."""
    v0 = src[lo]
    v1 = src[lo + np.uint64(1)]
    v2 = src[lo + np.uint64(2)]
    v3 = src[lo + np.uint64(3)]
    v4 = src[lo + np.uint64(4)]
    v5 = src[lo + np.uint64(5)]
    v6 = src[lo + np.uint64(6)]
    v7 = src[lo + np.uint64(7)]
    dst[at] = v0
    dst[at + np.uint64(1)] = v1
    dst[at + np.uint64(2)] = v2
    dst[at + np.uint64(3)] = v3
    dst[at + np.uint64(4)] = v4
    dst[at + np.uint64(5)] = v5
    dst[at + np.uint64(6)] = v6
    dst[at + np.uint64(7)] = v7


@numba.njit(cache=True, inline="always")
def _gather_group(gathered_w, gathered_i, thresholds, q0, q1, q2, q3, own, slots, thr8, j, at, glo, n):
    """Slots at.. of the gather buffer get the n queries of group j, at glo in the chunk's grouping: the words
    compared, the slot (copied from slots, which counts 0, 1, ...) and the group's threshold (thr8 holds each
    group's 8 times). All are whole 8-slot vector copies, the first one unconditional: no branch per slot or
    per small group to mispredict. The sources have 8 slots of padding, and slots past the group are
    overwritten or never read."""
    g0, g1, g2, g3 = gathered_w[0], gathered_w[1], gathered_w[2], gathered_w[3]
    t = np.uint64(j * _COPY)
    c = 0
    while True:
        a = np.uint64(at + c)
        lo = np.uint64(glo + c)
        _copy_slots(g0, a, q0, lo)
        _copy_slots(g1, a, q1, lo)
        _copy_slots(g2, a, q2, lo)
        if own < 0:
            _copy_slots(g3, a, q3, lo)
        _copy_slots(gathered_i, a, slots, lo)
        _copy_slots(thresholds, a, thr8, t)
        c += _COPY
        if c >= n:
            break


@numba.njit(cache=True)
def _make_room(
    at, glo, n, gcap, gathered_w, gathered_i, thresholds, q0, q1, q2, q3, own, slots, thr8, j, nearest, hits,
    hit_words, hit_ranks, elo, ehi, b, order, shifts, bits, radii, split, max_distance, entry_ranks, entry_words,
    qw, qpos, qrank, out_q, out_r, fill, cap,
):
    """The gather buffer has no room for the n queries of group j at glo (rare: it is full, or the group is bigger
    than it, e.g. many equal keys): flush it, then whole buffers of an oversized group. Returns where the
    group's rest starts, its size and the fill; the buffer is empty after."""
    if at:
        fill = _flush_gathered(
            at, gathered_w, gathered_i, thresholds, nearest, hits, hit_words, hit_ranks, elo, ehi, b, own, order,
            shifts, bits, radii, split, max_distance, entry_ranks, entry_words, qw, qpos, qrank, out_q, out_r, fill,
            cap,
        )
    while n > gcap and fill >= 0:
        _gather_group(gathered_w, gathered_i, thresholds, q0, q1, q2, q3, own, slots, thr8, j, 0, glo, gcap)
        fill = _flush_gathered(
            gcap, gathered_w, gathered_i, thresholds, nearest, hits, hit_words, hit_ranks, elo, ehi, b, own, order,
            shifts, bits, radii, split, max_distance, entry_ranks, entry_words, qw, qpos, qrank, out_q, out_r, fill,
            cap,
        )
        glo += gcap
        n -= gcap
    return glo, n, fill


@numba.njit(cache=True, inline="always")
def _compact_bucket(first, n_sub, ebase, offsets, ends, pos, removed_bits, entry_ranks, entry_words, keep):
    """_filter_bucket on the sub-buckets first.. of one bucket in turn, moved down together: the bucket stays
    one contiguous range (the whole-bucket masks read it so)."""
    write = ebase + offsets[first]
    for i in range(first, first + n_sub):
        lo = ebase + offsets[i]
        hi = ebase + ends[i]
        offsets[i] = write - ebase
        write = _filter_bucket(lo, hi, write, pos, removed_bits, entry_ranks, entry_words, keep)
        ends[i] = write - ebase


@numba.njit(cache=True)
def _scan_bucket_block(
    b, t, n_threads, order, max_distance, shifts, bits, radii, split, sub_used, masks, mask_starts, mask_tops,
    bucket_base, entry_base, offsets, ends, entry_ranks, entry_words, qoffs, qwords, qpos, qranks, out_q, out_r, fill,
    cap, gathered_w, gathered_i, thresholds, nearest, hits, hit_words, hit_ranks, compact_pos, removed_bits, slots,
    keep,
):
    """Thread t's share of block b's buckets: each bucket is read once and compared with the queries of every
    group whose block value is within the block's radius, gathered into one contiguous buffer first (the words
    it compares, the slot in the chunk's grouping and the threshold). With compact_pos >= 0 each bucket is
    first compacted (_compact_bucket): the thread owns these buckets, and it is about to read them anyway.

    In the split block (parity_split) a bucket is 2**s sub-buckets and a group 2**s sub-groups, by parity key
    (both kept contiguous). The chunk reads them as 2**used parts (used <= s: the top bits of the key). Pass 0
    compares the whole bucket with the whole groups of the masks below full weight; pass 1 + h compares part h
    of the bucket with the part h ^ target of the full-weight masks' groups. (With used = 0 a single pass
    compares whole buckets with whole groups, as in any other block; _first_found_here keeps that exact.)"""
    nb = np.int64(1) << bits[b]
    lo_bucket = nb * t // n_threads
    hi_bucket = nb * (t + 1) // n_threads
    sub = _sub_bits(b, split)
    n_sub = np.int64(1) << sub
    obase = bucket_base[b]
    ebase = entry_base[b]
    qoff = qoffs[b]
    qw = qwords[b]
    qpos_b = qpos[b]
    qranks_b = qranks[b]
    own = shifts[b] // 16 if bits[b] == 16 and shifts[b] % 16 == 0 else -1  # the word the block is, if one
    # the rows gathered: the three other words, or all four
    r0, r1, r2, r3 = (own + 1) % 4 if own >= 0 else 0, (own + 2) % 4 if own >= 0 else 1, (own + 3) % 4, 3
    q0, q1, q2, q3 = qw[r0], qw[r1], qw[r2], qw[r3]
    m_own = masks[mask_starts[b] : mask_starts[b + 1]]
    used = min(sub, sub_used)
    part_sub = np.int64(1) << (sub - used)  # sub-buckets per part
    n_whole = mask_tops[b] - mask_starts[b] if used else m_own.shape[0]  # the masks that read the whole bucket
    n_passes = 1 + (np.int64(1) << used) if n_whole < m_own.shape[0] else 1
    target = split[2] >> (sub - used)
    thr8 = np.empty(_COPY * m_own.shape[0], dtype=np.int16)  # each group's threshold (the distance left for
    for j in range(m_own.shape[0]):  # its words), 8 times over for whole-slot copies
        thr8[_COPY * j : _COPY * (j + 1)] = max_distance - (_popcount(np.uint64(m_own[j])) if own >= 0 else 0)
    gcap = gathered_i.shape[0] - _LANES  # slack for the whole-slot copies and the padding to whole registers
    for bucket in range(lo_bucket, hi_bucket):
        first = obase + (bucket << sub)
        if compact_pos >= 0 and offsets[first] < ends[first + n_sub - 1]:
            _compact_bucket(first, n_sub, ebase, offsets, ends, compact_pos, removed_bits, entry_ranks, entry_words,
                            keep)
        if offsets[first] == ends[first + n_sub - 1]:
            continue
        for part in range(n_passes):
            if part == 0:  # the whole bucket, the whole groups
                elo, ehi = ebase + offsets[first], ebase + ends[first + n_sub - 1]
                j_lo, j_hi, pick, span = 0, n_whole, 0, n_sub
            else:  # part h of the bucket, the part of the groups that can hold its pairs
                h_lo = first + (part - 1) * part_sub
                elo, ehi = ebase + offsets[h_lo], ebase + ends[h_lo + part_sub - 1]
                j_lo, j_hi, pick, span = n_whole, m_own.shape[0], ((part - 1) ^ target) * part_sub, part_sub
            if elo == ehi:
                continue
            at = 0
            for j in range(j_lo, j_hi):
                g = ((bucket ^ m_own[j]) << sub) | pick
                glo = qoff[g]
                n = qoff[g + span] - glo
                if at + n > gcap:
                    glo, n, fill = _make_room(
                        at, glo, n, gcap, gathered_w, gathered_i, thresholds, q0, q1, q2, q3, own, slots, thr8, j,
                        nearest, hits, hit_words, hit_ranks, elo, ehi, b, order, shifts, bits, radii, split,
                        max_distance, entry_ranks, entry_words, qw, qpos_b, qranks_b, out_q, out_r, fill, cap,
                    )
                    at = 0
                    if fill < 0:
                        return -1
                _gather_group(gathered_w, gathered_i, thresholds, q0, q1, q2, q3, own, slots, thr8, j, at, glo, n)
                at += n
            if at:
                fill = _flush_gathered(
                    at, gathered_w, gathered_i, thresholds, nearest, hits, hit_words, hit_ranks, elo, ehi, b, own,
                    order, shifts, bits, radii, split, max_distance, entry_ranks, entry_words, qw, qpos_b, qranks_b,
                    out_q, out_r, fill, cap,
                )
                if fill < 0:
                    return -1
    return fill


@numba.njit(cache=True, parallel=True)
def _search_chunk_by_bucket(
    n_threads, order, max_distance, shifts, bits, radii, split, sub_used, masks, mask_starts, mask_tops, bucket_base,
    entry_base, offsets, ends, entry_ranks, entry_words, qoffs, qwords, qpos, qranks, out_q, out_r, fills,
    gather, compact_pos, removed_bits,
):
    """Same pairs as _search_chunk, bucket-major: for chunks with more queries than buckets, every bucket is
    loaded once per chunk instead of once per probing query (the lookups are batched and sorted by bucket)."""
    cap = out_q.shape[1]
    slots = np.arange(qwords.shape[2], dtype=np.int32)  # copied into the gather buffer: each slot's own number
    for t in prange(n_threads):
        fill = 0
        gathered_i = np.empty(gather + _LANES, dtype=np.int32)
        gathered_w = np.empty((4, gather + _LANES), dtype=np.uint16)
        thresholds = np.empty(gather + _LANES, dtype=np.int16)
        nearest = np.empty(gather + _LANES, dtype=np.uint16)
        hits = np.empty(gather + _LANES, dtype=np.int64)
        hit_words = np.empty((5, _LANES), dtype=np.uint16)
        hit_ranks = np.empty(_LANES, dtype=np.int64)
        keep = np.empty(_KEEP, dtype=np.int64)
        for b in range(shifts.shape[0]):
            if radii[b] < 0:
                continue
            fill = _scan_bucket_block(
                b, t, n_threads, order, max_distance, shifts, bits, radii, split, sub_used, masks, mask_starts,
                mask_tops, bucket_base, entry_base, offsets, ends, entry_ranks, entry_words, qoffs, qwords, qpos,
                qranks, out_q[t], out_r[t], fill, cap, gathered_w, gathered_i, thresholds, nearest, hits, hit_words,
                hit_ranks, compact_pos, removed_bits, slots, keep,
            )
            if fill < 0:
                break
        fills[t] = fill


@numba.njit(cache=True)
def _resolve_chunk(queries, out_q, out_r, fills, order, removed_bits, exemplar_of, exemplars, n_exemplars):
    """Apply the greedy rule to the chunk's queries (walk ranks, ascending); the pairs found name their neighbours
    by walk rank. Exemplars and exemplar_of hold items. Returns (exemplar count, hashes removed)."""
    k = queries.shape[0]
    starts = np.zeros(k + 1, dtype=np.int64)
    for t in range(fills.shape[0]):
        for e in range(fills[t]):
            starts[out_q[t, e] + 1] += 1
    for i in range(k):
        starts[i + 1] += starts[i]
    neighbours = np.empty(starts[k], dtype=np.int64)
    slot = starts[:k].copy()
    for t in range(fills.shape[0]):
        for e in range(fills[t]):
            qi = out_q[t, e]
            neighbours[slot[qi]] = out_r[t, e]
            slot[qi] += 1
    n_removed = 0
    for i in range(k):
        r = queries[i]
        if _is_removed(removed_bits, r):
            continue
        q = order[r]
        exemplar_of[q] = q
        exemplars[n_exemplars] = q
        n_exemplars += 1
        for e in range(starts[i], starts[i + 1]):
            rr = neighbours[e]
            if not _is_removed(removed_bits, rr):  # the bits by rank are small (n / 8 bytes): cached reads
                removed_bits[rr >> 6] |= np.uint64(1) << np.uint64(rr & 63)
                exemplar_of[order[rr]] = q
                n_removed += 1
    return n_exemplars, n_removed


@numba.njit(cache=True, inline="always")
def _is_removed(removed_bits, r):
    """Whether the item at walk rank r has been removed."""
    return (removed_bits[r >> 6] >> np.uint64(r & 63)) & np.uint64(1) != 0


@numba.njit(cache=True)
def _skip_removed(pos, removed_bits, n):
    """The first walk position from pos whose item still stands (n if none)."""
    while pos < n and _is_removed(removed_bits, pos):
        pos += 1
    return pos


@numba.njit(cache=True)
def _next_queries(n, pos, removed_bits, k, out):
    """The walk ranks of the next k standing hashes from walk position pos into out; returns how many there were."""
    c = 0
    while pos < n and c < k:
        if not _is_removed(removed_bits, pos):
            out[c] = pos
            c += 1
        pos += 1
    return c


@numba.njit(cache=True, parallel=True)
def _in_walk_order(hashes, order):
    """hashes[order], gathered in parallel."""
    out = np.empty(order.shape[0], dtype=np.uint64)
    for i in prange(order.shape[0]):
        out[i] = hashes[order[i]]
    return out


@numba.njit(cache=True)
def _standing_after(n, pos, removed_bits):
    """The walk ranks of the hashes still standing from walk position pos."""
    out = np.empty(n - pos, dtype=np.int64)
    c = 0
    for p in range(pos, n):
        if not _is_removed(removed_bits, p):
            out[c] = p
            c += 1
    return out[:c]


# ------------------------------------------------------------------------------------------------ driver


@dataclass
class DedupResult:
    """``exemplars``: indices kept, in walk order; ``exemplar_of[i]``: the exemplar that removed i (itself if kept)."""

    exemplars: np.ndarray
    exemplar_of: np.ndarray


def walk_order(n: int, seed: int = 0) -> np.ndarray:
    """The random walk order used when no explicit order is given."""
    return np.random.default_rng(seed).permutation(n).astype(np.int64)


def _check_order(order, n: int) -> np.ndarray:
    order = np.asarray(order, dtype=np.int64).reshape(-1)
    if order.shape[0] != n:
        raise ValueError(f"order has {order.shape[0]} entries for {n} hashes")
    seen = np.zeros(n, dtype=bool)
    if n and (order.min() < 0 or order.max() >= n):
        raise ValueError("order holds indices outside 0..n-1")
    seen[order] = True
    if not seen.all():
        raise ValueError("order is not a permutation of 0..n-1")
    return order


@numba.njit(cache=True, inline="always")
def _filter_bucket(lo, hi, write, pos, removed_bits, entry_ranks, entry_words, keep):
    """Move the entries lo..hi of one bucket that are neither behind the walk (rank < pos) nor removed down to
    write.. (write <= lo), in order; returns the new end. (Slots past that stay unused until the next build.)

    A slice of entries at a time (keep's size): their flags first, in a loop of independent reads of
    removed_bits that overlap (one loop that also moved entries would wait for each read in turn), then the
    moves."""
    r0, r1, r2, r3 = entry_words[0], entry_words[1], entry_words[2], entry_words[3]
    for start in range(lo, hi, keep.shape[0]):
        stop = min(start + keep.shape[0], hi)
        for e in range(start, stop):
            er = entry_ranks[e]
            keep[e - start] = (er >= pos) & (not _is_removed(removed_bits, er))
        for e in range(start, stop):
            entry_ranks[write] = entry_ranks[e]
            r0[write] = r0[e]
            r1[write] = r1[e]
            r2[write] = r2[e]
            r3[write] = r3[e]
            write += keep[e - start]
    return write


@numba.njit(cache=True, parallel=True)
def _compact_index(pos, removed_bits, bits, split, radii, bucket_base, entry_base, offsets, ends, entry_ranks,
                   entry_words):
    """_compact_bucket on every bucket of every indexed block (blocks in parallel)."""
    for b in prange(bits.shape[0]):
        if radii[b] >= 0:
            sub = _sub_bits(b, split)
            obase = bucket_base[b]
            ebase = entry_base[b]
            keep = np.empty(_KEEP, dtype=np.int64)
            for bucket in range(np.int64(1) << bits[b]):
                _compact_bucket(obase + (bucket << sub), np.int64(1) << sub, ebase, offsets, ends, pos, removed_bits,
                                entry_ranks, entry_words, keep)


def _next_chunk_size(count: int, wasted: float, chunk_cost: float, query_cost: float) -> int:
    """Chunk size with the least cost per useful query, (F / K + c) / (1 - a K).

    F: the fixed cost of a bucket-major chunk; c: one query's comparisons; a K: the share of a chunk's queries
    removed by earlier ones of the same chunk, estimated from the last chunk (it grows about linearly with K).
    The minimum is at K = F / c * (sqrt(1 + c / (a F)) - 1); the size changes at most 8-fold per chunk.
    """
    a = max(wasted, 0.002) / count
    best = chunk_cost / query_cost * (math.sqrt(1.0 + query_cost / (a * chunk_cost)) - 1.0)
    return int(min(max(best, count / 8), count * 8))


def _pair_buffers(n_threads: int, entries: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-thread slots for the (query, neighbour) pairs a chunk finds."""
    return np.empty((n_threads, entries), dtype=np.int32), np.empty((n_threads, entries), dtype=np.int32)


class _Index:
    """The multi-index of the hashes still standing: one bucket array per indexed block of the plan.

    Entries hold the hash and its walk rank, sorted by bucket (sub-bucket in the split block) and then by rank.
    Built once for a plan; between builds it is compacted in place (a sequential pass) instead of being rebuilt.
    """

    def __init__(self, plan: BlockPlan, max_distance: int, n: int, parity_bits: int | None = None):
        """An index for a plan and about n hashes; parity_bits: the split's, by default from n (_parity_bits)."""
        self.plan = plan
        self.split = parity_split(plan, max_distance, _parity_bits(plan, n) if parity_bits is None else parity_bits)
        split_block, sub = int(self.split[0]), int(self.split[1])
        self.masks, self.mask_starts, self.mask_tops = _mask_tables(plan, split_block)
        self.shifts = np.array(plan.shifts, dtype=np.int64)
        self.bits = np.array(plan.bits, dtype=np.int64)
        self.radii = np.array(plan.radii, dtype=np.int64)
        indexed = [not plan.brute_force and r >= 0 for r in plan.radii]
        self.n_indexed = sum(indexed)
        key_bits = [int(_key_bits(b, self.bits, self.split)) for b in range(len(plan.bits))]
        self.bucket_base = np.zeros(len(plan.bits), dtype=np.int64)
        total = 0
        for b, on in enumerate(indexed):
            self.bucket_base[b] = total
            total += (1 << key_bits[b]) + 1 if on else 0
        self.offsets = np.zeros(max(total, 1), dtype=np.int64)  # each (sub-)bucket's first entry
        self.ends = np.zeros(max(total, 1), dtype=np.int64)  # and its end (both moved by compactions)
        self.entry_base = np.zeros(len(plan.bits), dtype=np.int64)
        self.max_buckets = 1 << int(self.bits.max()) if not plan.brute_force else 0
        self.max_groups = 1 << max(key_bits) if not plan.brute_force else 0  # the chunk's query groups per block
        self.sub = sub
        # per indexed block, for the cost model: buckets, masks that read a whole bucket, full-weight masks of
        # the split block (which read a part of it)
        on = [b for b in range(len(indexed)) if indexed[b]]
        self.block_sizes = np.array([2.0 ** int(self.bits[b]) for b in on])
        self.whole_masks = np.array([float(self.mask_tops[b] - self.mask_starts[b]) for b in on])
        self.top_masks = np.array([float(self.mask_starts[b + 1] - self.mask_tops[b]) for b in on])
        self.is_split = np.array([b == split_block for b in on])
        self.used = sub  # parity bits the last chunk used
        self.size = -1  # hashes indexed (stale ones included); -1: not built
        self.stale_cost = 0.0  # comparisons spent on stale entries since the last build or compaction
        self.active = np.empty(0, dtype=np.int64)  # the brute-force plan scans these walk ranks instead

    def pass_rate(self, used: int) -> float:
        """The share of the standing hashes a query is compared with when the chunk uses this many parity bits
        (the split block's full-weight masks read 1 / 2**used of a bucket)."""
        top = self.top_masks / np.where(self.is_split, 2.0**used, 1.0)
        return float(((self.whole_masks + top) / self.block_sizes).sum())

    def batched_pairs(self, used: int) -> float:
        """(Bucket, mask) lookups of a bucket-major chunk: each full-weight mask of the split block is looked up
        once per part of the bucket."""
        top = self.top_masks * np.where(self.is_split, 2.0**used, 1.0)
        return float((self.block_sizes * (self.whole_masks + top)).sum())

    def chunk_cost(self, used: int) -> float:
        """The fixed cost of a bucket-major chunk, in comparisons: its (bucket, mask) lookups, and a visit to every
        entry of every block (what a bucket's pass costs beyond its comparisons: loading each entry for each
        gathered batch, the exact pass)."""
        return _BATCHED_PROBE_COST * self.batched_pairs(used) + _ENTRY_VISIT_COST * self.size * self.n_indexed

    def candidates_per_query(self, n_standing: int, used: int) -> float:
        return max(1.0, n_standing * self.pass_rate(used))

    def parity_bits_for(self, queries: int, n_standing: int) -> int:
        """The parity bits a bucket-major chunk of this many queries uses: each one halves the comparisons of the
        split block's full-weight masks and doubles their lookups, so the bigger the groups and buckets, the
        more pay (at 10M hashes: 0 bits in a first chunk of 65k queries, 1 in chunks of ~500k)."""
        costs = [self.chunk_cost(u) + queries * self.candidates_per_query(n_standing, u) for u in range(self.sub + 1)]
        self.used = int(np.argmin(costs))
        return self.used

    def build(self, active: np.ndarray, walk_hashes: np.ndarray) -> None:
        """Index the hashes at walk ranks ``active`` (ascending)."""
        self.size = len(active)
        if self.plan.brute_force:
            self.active = active
            return
        self.entry_ranks = np.empty(self.n_indexed * self.size, dtype=np.int32)
        self.entry_words = np.empty((4, self.n_indexed * self.size), dtype=np.uint16)
        c = 0
        for b, r in enumerate(self.radii):
            self.entry_base[b] = c * self.size
            c += int(r >= 0)
        _build_index(active, walk_hashes, self.shifts, self.bits, self.radii, self.split, self.bucket_base,
                     self.entry_base, self.offsets, self.entry_ranks, self.entry_words,
                     min(numba.get_num_threads(), self.n_indexed))
        self.ends[:-1] = self.offsets[1:]  # (a block's last end is the next block's first start: never read)
        self.stale_cost = 0.0

    def worth_compacting(self, n_standing: int, queries: int) -> bool:
        """Whether to compact before a chunk of this many queries; counts what the chunk would spend on stale
        entries either way.

        Stale entries (behind the walk or removed) cost every query that reads their buckets; a compaction costs
        a pass over the index. Compacting once the comparisons spent on stale entries since the last compaction
        reach that cost (the ski-rental rule) keeps the total within about twice the best schedule's, whatever
        the size. (The fixed 3 % share of stale entries used before made 37 passes, 46 s, at 100M hashes.)"""
        if self.plan.brute_force or self.size <= n_standing:
            return False
        self.stale_cost += (self.size - n_standing) * queries * self.pass_rate(self.used)
        return self.stale_cost >= _COMPACT_COST * self.size * self.n_indexed

    def compact(self, pos: int, removed_bits: np.ndarray, n_standing: int) -> None:
        _compact_index(np.int64(pos), removed_bits, self.bits, self.split, self.radii, self.bucket_base,
                       self.entry_base, self.offsets, self.ends, self.entry_ranks, self.entry_words)
        self.size = n_standing
        self.stale_cost = 0.0


def greedy_clusters(
    hashes, max_distance: int = DEFAULT_MAX_HAMMING, seed: int = 0, order=None, *, plan: BlockPlan | None = None,
    n_threads: int | None = None, buffer_entries: int | None = None, gather_entries: int | None = None,
    parity_bits: int | None = None,
) -> DedupResult:
    """Greedy exemplar selection with the assignment of every removed hash to the exemplar that removed it.

    ``plan`` fixes the block split (tests, benchmarks); by default it follows the number of hashes standing,
    so the index is rebuilt with fewer, narrower blocks once most hashes are gone. ``buffer_entries`` and
    ``gather_entries`` fix the pair and gather buffers' sizes (tests use small ones to reach their overflow paths).
    ``parity_bits`` fixes the parity bits of the index's split block (parity_split; by default they follow the
    number of hashes indexed). None of these changes the result.
    """
    # Longer than 80 lines on purpose: the speculative chunk walk adapts its chunk size, index and neighbour buffers
    # from one chunk to the next, and those arrays live as locals across the loop (the hot parts are the numba
    # kernels above); split into functions, each step would take and return all of them.
    hashes = np.ascontiguousarray(np.asarray(hashes, dtype=np.uint64).reshape(-1))
    n = hashes.shape[0]
    if max_distance < 0:
        raise ValueError(f"max_distance must be >= 0, got {max_distance}")
    if n >= 2**31:
        raise ValueError(f"{n} hashes: at most 2**31 - 1 per call (de-duplicate in parts, then across them)")
    order = walk_order(n, seed) if order is None else _check_order(order, n)
    exemplar_of = np.full(n, -1, dtype=np.int64)
    exemplars = np.empty(n, dtype=np.int64)
    if n == 0:
        return DedupResult(exemplars[:0], exemplar_of)
    walk_hashes = _in_walk_order(hashes, order)  # the search reads hashes by walk rank only: forward passes
    removed_bits = np.zeros((n + 63) // 64, dtype=np.uint64)  # bit r: the item at walk rank r is removed

    fixed_plan = plan
    index = _Index(plan or plan_blocks(int(max_distance), n), int(max_distance), n, parity_bits)
    n_threads = max(1, min(n_threads or numba.get_num_threads(), numba.get_num_threads()))
    # small inputs need small buffers; they grow (up to buffer_cap, then chunks shrink) when chunks find more pairs
    buffer_cap = buffer_entries or _MAX_BUFFER_ENTRIES
    out_q, out_r = _pair_buffers(n_threads, buffer_entries or min(_BUFFER_ENTRIES, max(1024, 8 * n)))
    fills = np.zeros(n_threads, dtype=np.int64)
    k_max = n
    k = min(max(4096, index.max_buckets), k_max)  # bucket-major from the first chunk
    query_buf = np.empty(k_max, dtype=np.int64)
    no_sort = np.empty((len(index.bits), 0), dtype=np.int64)
    pos = 0
    n_exemplars = 0
    n_removed = 0
    while True:
        pos = _skip_removed(pos, removed_bits, n)
        if pos >= n:
            break
        n_standing = n - n_exemplars - n_removed  # all at walk position >= pos
        replan = None if fixed_plan else plan_blocks(int(max_distance), n_standing)
        if index.size < 0 or (replan is not None and replan != index.plan and n_standing < 0.5 * index.size):
            index = _Index(replan or index.plan, int(max_distance), n_standing, parity_bits)
            index.build(_standing_after(n, pos, removed_bits), walk_hashes)
        elif index.plan.brute_force and n_standing < 0.75 * index.size:
            index.build(_standing_after(n, pos, removed_bits), walk_hashes)
        count = _next_queries(n, pos, removed_bits, k, query_buf)
        stale = index.worth_compacting(n_standing, count)
        queries = query_buf[:count]
        ix = index
        bucket_major = not ix.plan.brute_force and count * 8 >= ix.max_buckets
        if stale and not bucket_major:
            index.compact(pos, removed_bits, n_standing)
        compact_pos = pos if stale and bucket_major else -1  # the search compacts each bucket it reads first
        if bucket_major:
            sub_used = ix.parity_bits_for(count, n_standing)
            qoffs, qwords, qpos, qranks = _group_queries(queries, walk_hashes, ix.shifts, ix.bits, ix.radii,
                                                         ix.split, ix.max_groups)
            _search_chunk_by_bucket(
                n_threads, order, np.int64(max_distance), ix.shifts, ix.bits, ix.radii, ix.split, np.int64(sub_used),
                ix.masks, ix.mask_starts, ix.mask_tops, ix.bucket_base, ix.entry_base, ix.offsets, ix.ends,
                ix.entry_ranks, ix.entry_words, qoffs, qwords, qpos, qranks, out_q, out_r, fills,
                gather_entries or _GATHER, np.int64(compact_pos), removed_bits,
            )
        elif not ix.plan.brute_force:
            sorted_by_block = _sort_queries_by_block(queries, walk_hashes, ix.shifts, ix.bits, ix.radii)
            _search_chunk(
                queries, sorted_by_block, n_threads, walk_hashes, removed_bits, order, np.int64(max_distance), False,
                ix.active, ix.shifts, ix.bits, ix.radii, ix.split, ix.masks, ix.mask_starts, ix.mask_tops,
                ix.bucket_base, ix.entry_base, ix.offsets, ix.ends, ix.entry_ranks, ix.entry_words, out_q, out_r,
                fills,
            )
        else:
            _search_chunk(
                queries, no_sort, n_threads, walk_hashes, removed_bits, order, np.int64(max_distance), True, ix.active,
                ix.shifts, ix.bits, ix.radii, ix.split, ix.masks, ix.mask_starts, ix.mask_tops, ix.bucket_base,
                ix.entry_base, ix.offsets, ix.ends, _NO_RANKS, _NO_WORDS, out_q, out_r, fills,
            )
        if (fills < 0).any():  # neighbour lists overflowed: retry with a bigger buffer, or fewer queries
            if out_q.shape[1] < buffer_cap or k == 1:
                out_q, out_r = _pair_buffers(n_threads, 2 * out_q.shape[1])
            else:
                k = max(1, k // 4)
            continue
        before = n_exemplars
        n_exemplars, newly_removed = _resolve_chunk(
            queries, out_q, out_r, fills, order, removed_bits, exemplar_of, exemplars, n_exemplars
        )
        n_removed += newly_removed
        if compact_pos >= 0:
            index.size = n_standing
            index.stale_cost = 0.0
        pos = int(queries[-1]) + 1
        # queries removed by an earlier query of their own chunk were wasted: the next chunk's size trades that
        # waste against the fixed cost of a bucket-major chunk
        wasted = 1.0 - (n_exemplars - before) / count
        if bucket_major:
            k = _next_chunk_size(count, wasted, ix.chunk_cost(sub_used), ix.candidates_per_query(n_standing, sub_used))
        elif wasted < 0.05:
            k = k * 2
        elif wasted > 0.2:
            k = k // 2
        k = max(256, min(k_max, k))
        expected_pairs = 1.25 * fills.sum() / count * k / n_threads  # the next chunk's, per thread
        if out_q.shape[1] < min(expected_pairs, buffer_cap):
            out_q, out_r = _pair_buffers(n_threads, int(min(expected_pairs, buffer_cap)))
    return DedupResult(exemplars[:n_exemplars].copy(), exemplar_of)


def deduplicate(hashes, max_distance: int = DEFAULT_MAX_HAMMING, seed: int = 0, order=None) -> np.ndarray:
    """Indices of the exemplar hashes (in walk order) after greedy removal of near duplicates.

    ``hashes``: uint64 array. Walks in a random order drawn from ``seed`` unless ``order`` (a permutation of
    0..n-1) is given; each exemplar removes every remaining hash within Hamming distance <= max_distance.
    """
    return greedy_clusters(hashes, max_distance, seed, order).exemplars


def deduplicate_reference(hashes, max_distance: int = DEFAULT_MAX_HAMMING, seed: int = 0, order=None) -> np.ndarray:
    """The original's loop, for benchmarks: each exemplar scans every remaining hash and ``np.delete``s the
    near ones (quadratic time, a copy per exemplar). Hashes stay packed in uint64 here, which is faster than
    the original's rows of 64 booleans, so speed-ups measured against it are conservative."""
    hashes = np.asarray(hashes, dtype=np.uint64).reshape(-1)
    order = walk_order(len(hashes), seed) if order is None else np.asarray(order, dtype=np.int64)
    remaining = hashes[order]
    remaining_idx = order.copy()
    keep = []
    while len(remaining):
        keep.append(remaining_idx[0])
        drop = np.nonzero(np.bitwise_count(remaining ^ remaining[0]) <= max_distance)[0]
        remaining = np.delete(remaining, drop)
        remaining_idx = np.delete(remaining_idx, drop)
    return np.array(keep, dtype=np.int64)
