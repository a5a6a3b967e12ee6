"""Greedy de-duplication: identical to a plain quadratic loop for the same walk order."""
import numpy as np
import pytest

from cellemnet.dataset.dedup import (
    BlockPlan,
    deduplicate,
    deduplicate_reference,
    greedy_clusters,
    plan_blocks,
    walk_order,
)


def oracle(hashes, max_distance, order):
    """The specification: walk in order; a hash not yet removed is an exemplar and removes all within distance."""
    hashes = np.asarray(hashes, dtype=np.uint64)
    removed = np.zeros(len(hashes), dtype=bool)
    exemplar_of = np.full(len(hashes), -1)
    exemplars = []
    for i in order:
        if removed[i]:
            continue
        exemplars.append(int(i))
        exemplar_of[i] = i
        near = (np.bitwise_count(hashes ^ hashes[i]) <= max_distance) & ~removed
        exemplar_of[near & (exemplar_of < 0)] = i
        removed |= near
    return np.array(exemplars, dtype=np.int64), exemplar_of


def clustered(n, seed, n_centres=None, max_flips=10):
    rng = np.random.default_rng(seed)
    centres = rng.integers(0, np.iinfo(np.uint64).max, n_centres or max(1, n // 6), dtype=np.uint64, endpoint=True)
    h = centres[rng.integers(0, len(centres), n)]
    for _ in range(max_flips):
        flip = rng.random(n) < 0.5
        h[flip] ^= np.uint64(1) << rng.integers(0, 64, flip.sum()).astype(np.uint64)
    return h


def _flip(h, rng, shift, width, count):
    """h with count random bits of bits shift..shift + width flipped."""
    for bit in rng.choice(width, size=count, replace=False):
        h ^= np.uint64(1) << np.uint64(shift + int(bit))
    return h


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("n", [1, 7, 300, 4000])
def test_equals_oracle_for_random_orders(n, seed):
    hashes = clustered(n, seed)
    order = walk_order(n, seed)
    result = greedy_clusters(hashes, 12, order=order)
    expected, expected_of = oracle(hashes, 12, order)
    assert np.array_equal(result.exemplars, expected)
    assert np.array_equal(result.exemplar_of, expected_of)


@pytest.mark.parametrize(
    "plan",
    [
        BlockPlan((0, 13, 26, 39, 52), (13, 13, 13, 13, 12), (2, 2, 2, 1, 1)),
        BlockPlan((0, 16, 32, 48), (16, 16, 16, 16), (3, 2, 2, 2)),
        BlockPlan((0,), (64,), (12,), brute_force=True),
    ],
    ids=["5-blocks", "4-blocks", "brute"],
)
@pytest.mark.parametrize("n_threads", [1, 2])
def test_every_search_strategy_equals_oracle(plan, n_threads):
    hashes = clustered(6000, 11)
    order = walk_order(len(hashes), 5)
    # small neighbour and gather buffers force their overflow paths as well
    result = greedy_clusters(hashes, 12, order=order, plan=plan, n_threads=n_threads, buffer_entries=64,
                             gather_entries=64)
    expected, expected_of = oracle(hashes, 12, order)
    assert np.array_equal(result.exemplars, expected)
    assert np.array_equal(result.exemplar_of, expected_of)


@pytest.mark.parametrize("n_threads", [1, 2])
def test_bucket_major_search_with_16_bit_blocks_equals_oracle(n_threads):
    """20,000 queries in one chunk: the 4 x 16-bit plan searches bucket by bucket (its largest plan)."""
    hashes = clustered(20000, 12)
    order = walk_order(len(hashes), 2)
    plan = BlockPlan((0, 16, 32, 48), (16, 16, 16, 16), (3, 2, 2, 2))
    result = greedy_clusters(hashes, 12, order=order, plan=plan, n_threads=n_threads)
    expected, expected_of = oracle(hashes, 12, order)
    assert np.array_equal(result.exemplars, expected)
    assert np.array_equal(result.exemplar_of, expected_of)


def test_query_groups_larger_than_the_gather_buffer_equal_oracle():
    """3,000 hashes share their first 13-bit block (one query group far bigger than a 16-query gather buffer),
    mixed with clusters. They come in pairs 12 bits apart, 3 bits in each other block, so only that first block
    (radius 2) finds a pair, through the oversized group."""
    rng = np.random.default_rng(8)
    base = (rng.integers(0, 2**50, 1500, dtype=np.uint64) << np.uint64(13)) | np.uint64(0x1ABC)
    near = base.copy()
    for shift, width in ((13, 13), (26, 13), (39, 13), (52, 12)):
        for i in range(len(near)):
            near[i] = _flip(near[i], rng, shift, width, 3)
    hashes = np.concatenate([base, near, clustered(3000, 8)])
    order = walk_order(len(hashes), 3)
    plan = BlockPlan((0, 13, 26, 39, 52), (13, 13, 13, 13, 12), (2, 2, 2, 1, 1))
    result = greedy_clusters(hashes, 12, order=order, plan=plan, gather_entries=16)
    expected, expected_of = oracle(hashes, 12, order)
    assert np.array_equal(result.exemplars, expected)
    assert np.array_equal(result.exemplar_of, expected_of)


def test_default_plan_with_compaction_and_replanning_equals_oracle(monkeypatch):
    """With the default plan the index is compacted as hashes go (by a pass of its own before a query-major
    chunk, or by the bucket-major search as it reads each bucket) and rebuilt with narrower blocks when the
    standing set shrinks (7 blocks of 9-10 bits at 40,000 hashes, then 13 blocks of 5 bits). Compactions are
    made cheap here so that both kinds happen often."""
    from cellemnet.dataset import dedup

    calls = {"build": [], "compact": 0, "compact_in_search": 0}
    build, compact, search = dedup._Index.build, dedup._Index.compact, dedup._search_chunk_by_bucket

    def counted_build(self, *args):
        calls["build"].append(self.plan)
        return build(self, *args)

    def counted_compact(self, *args):
        calls["compact"] += 1
        return compact(self, *args)

    def counted_search(*args):
        calls["compact_in_search"] += int(args[-2] >= 0)  # compact_pos
        return search(*args)

    monkeypatch.setattr(dedup, "_COMPACT_COST", 0.01)
    monkeypatch.setattr(dedup._Index, "build", counted_build)
    monkeypatch.setattr(dedup._Index, "compact", counted_compact)
    monkeypatch.setattr(dedup, "_search_chunk_by_bucket", counted_search)
    hashes = clustered(40000, 21, n_centres=4000, max_flips=8)
    order = walk_order(len(hashes), 6)
    result = greedy_clusters(hashes, 12, order=order, buffer_entries=256)
    assert len(set(calls["build"])) >= 2 and calls["compact"] >= 1 and calls["compact_in_search"] >= 1
    expected, expected_of = oracle(hashes, 12, order)
    assert len(expected) < 0.5 * len(hashes)  # enough is removed for the plan to change
    assert plan_blocks(12, len(expected)) != plan_blocks(12, len(hashes))
    assert np.array_equal(result.exemplars, expected)
    assert np.array_equal(result.exemplar_of, expected_of)


@pytest.mark.parametrize("parity_bits", [0, 1, 3])
@pytest.mark.parametrize("used", [0, 1, 3])
def test_parity_split_equals_oracle(parity_bits, used, monkeypatch):
    """The split block's buckets are split by parity_bits parity bits; a chunk reads them as 2**used parts
    (at most parity_bits). Every combination finds the same pairs: in the 4 x 16-bit plan bucket by bucket, in
    the 5-block plan with buffers small enough for their overflow paths, and through query groups far bigger
    than the gather buffer. Those are pairs 12 bits apart that only the split block's full-weight masks find
    (2 bits in its block, 3, 3, 2 and 2 in the others: just over every other block's radius)."""
    from cellemnet.dataset import dedup

    monkeypatch.setattr(dedup._Index, "parity_bits_for", lambda self, queries, n_standing: min(used, self.sub))
    four = BlockPlan((0, 16, 32, 48), (16, 16, 16, 16), (3, 2, 2, 2))
    five = BlockPlan((0, 13, 26, 39, 52), (13, 13, 13, 13, 12), (2, 2, 2, 1, 1))
    hashes = clustered(20000, 12)
    order = walk_order(len(hashes), 2)
    result = greedy_clusters(hashes, 12, order=order, plan=four, parity_bits=parity_bits)
    expected, expected_of = oracle(hashes, 12, order)
    assert np.array_equal(result.exemplars, expected) and np.array_equal(result.exemplar_of, expected_of)

    rng = np.random.default_rng(9)
    base = (rng.integers(0, 2**50, 1500, dtype=np.uint64) << np.uint64(13)) | np.uint64(0x1ABC)
    near = base ^ np.uint64(0b101)  # weight 2 in the first block: its full weight
    for i in range(len(near)):
        for (shift, width), count in zip(((13, 13), (26, 13), (39, 13), (52, 12)), (3, 3, 2, 2)):
            near[i] = _flip(near[i], rng, shift, width, count)
    hashes = np.concatenate([base, near, clustered(3000, 8)])
    order = walk_order(len(hashes), 3)
    result = greedy_clusters(hashes, 12, order=order, plan=five, parity_bits=parity_bits, buffer_entries=64,
                             gather_entries=16)
    expected, expected_of = oracle(hashes, 12, order)
    assert len(expected) <= len(hashes) - 1500  # the pairs are found
    assert np.array_equal(result.exemplars, expected) and np.array_equal(result.exemplar_of, expected_of)


@pytest.mark.parametrize(
    "plan",
    [
        BlockPlan((0, 16, 32, 48), (16, 16, 16, 16), (3, 2, 2, 2)),
        BlockPlan((0, 13, 26, 39, 52), (13, 13, 13, 13, 12), (2, 2, 2, 1, 1)),
        BlockPlan((0, 10, 19, 28, 37, 46, 55), (10, 9, 9, 9, 9, 9, 9), (1, 1, 1, 1, 1, 1, 0)),
    ],
    ids=["4-blocks", "5-blocks", "7-blocks"],
)
def test_every_pair_within_the_distance_is_reported_by_one_block(plan):
    """With the parity split, each pair within 12 bits is reported through exactly one block: random pairs, and
    pairs at the split's edge (the split block at its radius, every other block one bit over its own)."""
    from cellemnet.dataset.dedup import _first_found_here, parity_split

    split = parity_split(plan, 12)
    assert split[0] >= 0 and split[1] == 3
    radii, bits, shifts = (np.array(v, dtype=np.int64) for v in (plan.radii, plan.bits, plan.shifts))
    rng = np.random.default_rng(1)
    diffs = [_flip(np.uint64(0), rng, 0, 64, int(rng.integers(0, 13))) for _ in range(3000)]
    for _ in range(3000):
        x = np.uint64(0)
        for b in range(len(bits)):
            x = _flip(x, rng, shifts[b], bits[b], radii[b] + (b != split[0]))
        diffs.append(x)
    for x in diffs:
        # the blocks whose search can meet the pair (within their radius; the split block also when a chunk
        # reads its buckets whole) and report it
        weights = [bin((int(x) >> int(shifts[b])) & ((1 << int(bits[b])) - 1)).count("1") for b in range(len(bits))]
        assert sum(weights[b] <= radii[b] and bool(_first_found_here(x, b, radii, bits, shifts, split))
                   for b in range(len(bits))) == 1


def test_parity_split_needs_a_tight_plan():
    from cellemnet.dataset.dedup import parity_split

    assert parity_split(BlockPlan((0, 16, 32, 48), (16, 16, 16, 16), (3, 3, 2, 2)), 12)[0] == -1  # slack
    assert parity_split(BlockPlan((0, 16, 32, 48), (16, 16, 16, 16), (3, 2, 2, 2)), 12, 0)[0] == -1
    assert parity_split(BlockPlan((0,), (64,), (12,), brute_force=True), 12)[0] == -1
    split = parity_split(BlockPlan((0, 16, 32, 48), (16, 16, 16, 16), (2, 2, 2, 3)), 12)
    assert split[0] == 3 and split[2] == 0b111  # the radius-3 block; the others differ in 3 bits: odd


@pytest.mark.parametrize("max_distance", [0, 3, 6, 20])
def test_other_distances_equal_oracle(max_distance):
    hashes = clustered(2000, max_distance, max_flips=14)
    order = walk_order(len(hashes), 0)
    expected, _ = oracle(hashes, max_distance, order)
    assert np.array_equal(deduplicate(hashes, max_distance, order=order), expected)


def test_boundary_distance_12_is_duplicate_13_is_not():
    base = np.uint64(0x0123456789ABCDEF)
    flip12 = base ^ np.uint64((1 << 12) - 1)  # 12 bits apart, all in the first 16-bit block
    spread13 = base
    for bit in range(0, 64, 5)[:13]:  # 13 bits apart, spread over every block
        spread13 ^= np.uint64(1 << bit)
    hashes = np.array([base, flip12, spread13], dtype=np.uint64)
    assert deduplicate(hashes, 12, order=[0, 1, 2]).tolist() == [0, 2]
    assert deduplicate(hashes, 13, order=[0, 1, 2]).tolist() == [0]
    assert deduplicate(hashes, 11, order=[0, 1, 2]).tolist() == [0, 1, 2]


def test_each_block_boundary_is_found():
    """12 flipped bits placed in every possible block pattern are all caught at distance 12."""
    rng = np.random.default_rng(3)
    base = np.uint64(rng.integers(0, 2**63))
    for trial in range(200):
        bits = rng.choice(64, size=12, replace=False)
        other = base
        for b in bits:
            other ^= np.uint64(1) << np.uint64(b)
        assert deduplicate(np.array([base, other], dtype=np.uint64), 12, order=[0, 1]).tolist() == [0]


def test_identical_hashes_collapse_to_one():
    hashes = np.full(50000, 42, dtype=np.uint64)
    result = greedy_clusters(hashes, 12, seed=4)
    assert len(result.exemplars) == 1
    assert (result.exemplar_of == result.exemplars[0]).all()


def test_seed_and_order():
    hashes = clustered(3000, 9)
    assert np.array_equal(deduplicate(hashes, seed=1), deduplicate(hashes, seed=1))
    assert np.array_equal(deduplicate(hashes, seed=1), oracle(hashes, 12, walk_order(3000, 1))[0])
    assert not np.array_equal(deduplicate(hashes, seed=1), deduplicate(hashes, seed=2))
    assert np.array_equal(deduplicate_reference(hashes, seed=1), deduplicate(hashes, seed=1))


def test_bad_arguments():
    with pytest.raises(ValueError):
        deduplicate(np.zeros(3, np.uint64), order=[0, 0, 1])
    with pytest.raises(ValueError):
        deduplicate(np.zeros(3, np.uint64), order=[0, 1])
    with pytest.raises(ValueError):
        deduplicate(np.zeros(3, np.uint64), max_distance=-1)
    assert deduplicate(np.zeros(0, np.uint64)).tolist() == []


def test_plans_satisfy_the_pigeonhole_condition():
    for d in (0, 1, 5, 12, 17):
        for n in (10, 10**4, 10**6):
            plan = plan_blocks(d, n)
            assert sum(plan.bits) == 64
            if not plan.brute_force:
                assert sum(plan.radii) >= d + 1 - len(plan.bits)
                assert max(plan.bits) <= 16
