"""Data: cached index, sources at any depth, 16-bit and shards, source-balanced DDP sampler, augmentations."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cellemnet.constants import EM_MEAN, EM_STD
from cellemnet.errors import InputError
from cellemnet.io import write_image
from cellemnet.pretraining import data as pdata
from cellemnet.pretraining.augment import MultiCrop, TwoViews


def test_index_finds_sources_at_any_depth_and_is_cached(tmp_path, monkeypatch):
    root = tmp_path / "patches"
    rng = np.random.default_rng(0)
    write_image(root / "a" / "deep" / "er" / "p0.tif", rng.integers(0, 256, (32, 32), dtype=np.uint8))
    write_image(root / "a" / "p1.png", rng.integers(0, 256, (32, 32), dtype=np.uint8))
    write_image(root / "b" / "p2.tiff", rng.integers(0, 65535, (32, 32)).astype(np.uint16))
    write_image(root / "loose.tif", rng.integers(0, 256, (32, 32), dtype=np.uint8))
    (root / "notes.txt").write_text("not a patch")
    index = pdata.load_index(root, tmp_path / "index.json")
    names, ids = pdata.item_sources(index)
    assert sorted(names) == [".", "a", "b"] and len(ids) == 4
    assert sorted(rel for _, rel in index["files"]) == ["a/deep/er/p0.tif", "a/p1.png", "b/p2.tiff", "loose.tif"]

    def no_rescan(_):
        raise AssertionError("re-scanned although nothing changed")

    monkeypatch.setattr(pdata, "scan_data", no_rescan)
    assert pdata.load_index(root, tmp_path / "index.json") == index
    monkeypatch.undo()
    write_image(root / "c" / "p3.tif", rng.integers(0, 256, (32, 32), dtype=np.uint8))  # a new source
    assert len(pdata.load_index(root, tmp_path / "index.json")["files"]) == 5

    ds = pdata.PatchDataset(root, pdata.load_index(root, tmp_path / "index.json"))
    patches = [ds[i] for i in range(len(ds))]
    assert all(p.dtype == torch.uint8 and p.shape == (1, 32, 32) for p in patches)
    assert max(int(p.max()) for p in patches) > 200  # the 16-bit patch is rescaled, not truncated


def test_hdf5_shards_are_sources(tmp_path):
    from cellemnet.dataset.store import write_shard

    rng = np.random.default_rng(1)
    patches = [rng.integers(0, 256, (24, 24), dtype=np.uint8) for _ in range(5)]
    write_shard(tmp_path / "shards" / "volA.h5", [f"n{i}" for i in range(5)], patches, np.arange(5))
    write_shard(tmp_path / "shards" / "volB.h5", ["m0", "m1"], patches[:2], np.arange(2))
    index = pdata.load_index(tmp_path / "shards", tmp_path / "index.json")
    names, ids = pdata.item_sources(index)
    assert names == ["volA", "volB"] and ids.tolist() == [0] * 5 + [1] * 2
    ds = pdata.PatchDataset(tmp_path / "shards", index)
    assert len(ds) == 7
    np.testing.assert_array_equal(ds[6][0].numpy(), patches[1])
    np.testing.assert_array_equal(ds[3][0].numpy(), patches[3])


def test_empty_folder_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no patches found"):
        pdata.load_index(tmp_path / "empty", tmp_path / "index.json")


def test_source_shares_grow_like_n_to_the_one_minus_gamma():
    ids = np.repeat([0, 1, 2], [1600, 400, 100])
    weights = pdata.source_weights(ids, gamma=0.5)
    sampler = pdata.SourceBalancedSampler(len(ids), weights, seed=3)
    draws = np.concatenate([sampler.rank_indices(e) for e in range(20)])
    expected = np.array([1600, 400, 100], dtype=float) ** 0.5
    np.testing.assert_allclose(pdata.source_shares(draws, ids), expected / expected.sum(), atol=0.01)
    uniform = pdata.source_weights(ids, gamma=1.0)
    np.testing.assert_allclose(np.bincount(ids, weights=uniform), [1 / 3] * 3)


def test_ranks_draw_disjoint_parts_of_one_epoch_reseeded_per_epoch_and_resumable():
    ids = np.repeat([0, 1], [90, 10])
    weights = pdata.source_weights(ids, 0.5)
    samplers = [pdata.SourceBalancedSampler(100, weights, rank=r, world_size=3, seed=7) for r in range(3)]
    for s in samplers:
        s.set_epoch(4)
    items = [list(s) for s in samplers]
    parts = [[i for i, _ in p] for p in items]
    draw = samplers[0].global_draw(4)
    assert all(len(p) == 33 for p in parts)
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.sort(draw))  # the parts tile the draw
    assert [p[:5] for p in parts] != [parts[0][:5]] * 3
    assert not np.array_equal(samplers[0].rank_indices(4), samplers[0].rank_indices(5))
    # Every draw of the epoch has its own seed words (seed, epoch, position in the global draw) ...
    words = [w for p in items for _, w in p]
    assert len(set(words)) == 99 and items[1][0][1] == (7, 4, 1)
    samplers[1].set_epoch(4, start_index=10)
    # ... so a resumed sampler yields the same indices with the same words.
    assert list(samplers[1]) == items[1][10:] and len(samplers[1]) == 23
    plain = [pdata.SourceBalancedSampler(100, None, rank=r, world_size=2, seed=0) for r in range(2)]
    both = [i for s in plain for i, _ in s]
    assert sorted(both) == list(range(100))  # no weighting: a permutation split between ranks


def test_seed_words_fix_the_views_whatever_the_global_rng_did(tmp_path):
    root = tmp_path / "p"
    write_image(root / "a" / "x.tif", np.random.default_rng(0).integers(0, 256, (48, 48), dtype=np.uint8))
    index = pdata.load_index(root, tmp_path / "index.json")
    dataset = pdata.PatchDataset(root, index, TwoViews(32, EM_MEAN, EM_STD))
    torch.manual_seed(1)
    first = dataset[(0, (5, 2, 9))]
    torch.manual_seed(2)  # another global state: the same words give the same views, and leave it untouched
    state = torch.get_rng_state()
    again = dataset[(0, (5, 2, 9))]
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    other = dataset[(0, (5, 2, 10))]
    assert not torch.equal(first[0], other[0])


def test_views_and_multicrop_have_the_configured_shapes_and_norms():
    patch = torch.full((1, 64, 64), 146, dtype=torch.uint8)  # 146/255 ~ EM mean
    q, k = TwoViews(32, EM_MEAN, EM_STD)(patch)
    assert q.shape == k.shape == (1, 32, 32) and q.dtype == torch.float32
    assert abs(float(q.mean())) < 2.0  # normalised around the EM mean
    crops = MultiCrop([2, 3], [32, 16], [0.14, 0.05], [1.0, 0.14], EM_MEAN, EM_STD)(
        torch.randint(0, 256, (1, 64, 64), dtype=torch.uint8))
    assert [c.shape[-1] for c in crops] == [32, 32, 16, 16, 16]
    a, b = TwoViews(32, EM_MEAN, EM_STD)(torch.randint(0, 256, (1, 64, 64), dtype=torch.uint8))
    assert not torch.equal(a, b)  # two independent random views


def test_a_nan_patch_is_named_when_the_data_is_indexed(tmp_path):
    from cellemnet.pretraining.data import read_patch

    data = tmp_path / "data"
    write_image(data / "src" / "good.tif", np.full((8, 8), 0.5, np.float32))  # float but finite: fine
    write_image(data / "src" / "ok.tif", np.zeros((8, 8), np.uint8))
    assert len(pdata.scan_data(data)["files"]) == 2
    write_image(data / "src" / "bad.tif", np.full((8, 8), np.nan, np.float32))
    with pytest.raises(InputError, match=r"bad\.tif: contains NaN or infinite values"):
        pdata.load_index(data, tmp_path / "index.json")  # before any model is built, not mid-epoch
    with pytest.raises(InputError, match=r"bad\.tif: contains NaN"):
        read_patch(data / "src" / "bad.tif")
