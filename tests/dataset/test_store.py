"""The HDF5 patch store: lossless round trip, the documented layout, atomic writes, lazy reader, manifest CSV."""
import json
import pickle

import h5py
import numpy as np
import pytest

from cellemnet.dataset import store
from cellemnet.dataset.names import format_name
from cellemnet.errors import InputError


def _patches(seed=0):
    rng = np.random.default_rng(seed)
    shapes = [(224, 224), (224, 130), (97, 224), (1, 1)]
    patches = [rng.integers(0, 256, s, dtype=np.uint8) for s in shapes]
    names = [format_name("vol", 0, s[0], 0, s[1], axis=0, slice_index=i) for i, s in enumerate(shapes)]
    hashes = np.array([0, 1, 2**64 - 1, 12345], dtype=np.uint64)
    return names, patches, hashes


def test_round_trip_is_lossless_and_layout_matches_contract(tmp_path):
    names, patches, hashes = _patches()
    path = store.write_shard(tmp_path / "a.h5", names, patches, hashes, {"source": "vol.nrrd", "spacing": [1, 2, 2]})
    loaded = store.load_shard(path)
    assert loaded["names"] == names
    assert loaded["hashes"].dtype == np.uint64 and loaded["hashes"].tolist() == hashes.tolist()
    assert loaded["metadata"] == {"source": "vol.nrrd", "spacing": [1, 2, 2]}
    for a, b in zip(loaded["patches"], patches):
        assert a.dtype == np.uint8 and a.shape == b.shape and np.array_equal(a, b)

    with h5py.File(path, "r") as f:
        assert f.attrs["format"] == "cellemnet-patches" and int(f.attrs["version"]) == 1
        assert json.loads(f.attrs["metadata"])["source"] == "vol.nrrd"
        assert f["pixels"].dtype == np.uint8 and f["pixels"].ndim == 1
        assert f["offsets"].dtype == np.int64 and f["offsets"].shape == (5,)
        assert f["shapes"].dtype == np.int32 and f["shapes"][()].tolist() == [list(p.shape) for p in patches]
        assert f["hashes"].dtype == np.uint64
        assert [s for s in f["names"].asstr()[()]] == names
        assert f["pixels"].shape[0] == sum(p.size for p in patches)


def test_reader_is_lazy_indexable_and_picklable(tmp_path):
    names, patches, hashes = _patches(1)
    path = store.write_shard(tmp_path / "b.h5", names, patches, hashes)
    reader = store.ShardReader(path)
    assert len(reader) == 4 and reader.names == names and reader.metadata == {}
    assert np.array_equal(reader.read(2), patches[2])
    assert np.array_equal(reader[-1], patches[-1])
    with pytest.raises(IndexError):
        reader.read(4)
    clone = pickle.loads(pickle.dumps(reader))
    assert clone._file is None
    assert np.array_equal(clone.read(1), patches[1])
    assert [p.shape for p in clone] == [p.shape for p in patches]


def test_empty_shard(tmp_path):
    path = store.write_shard(tmp_path / "e.h5", [], [], [])
    assert store.is_complete_shard(path)
    loaded = store.load_shard(path)
    assert loaded["names"] == [] and loaded["patches"] == [] and len(loaded["hashes"]) == 0


def test_bad_inputs_are_refused_and_nothing_is_left(tmp_path):
    names, patches, hashes = _patches()
    with pytest.raises(ValueError):
        store.write_shard(tmp_path / "c.h5", names[:2], patches, hashes)
    with pytest.raises(ValueError):
        store.write_shard(tmp_path / "c.h5", names, [p.astype(np.uint16) for p in patches], hashes)
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_the_previous_shard(tmp_path, monkeypatch):
    names, patches, hashes = _patches()
    path = store.write_shard(tmp_path / "d.h5", names, patches, hashes)
    before = path.read_bytes()

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(store.json, "dumps", boom)
    with pytest.raises(RuntimeError):
        store.write_shard(path, names[:1], patches[:1], hashes[:1])
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["d.h5"]


def test_non_shards_are_rejected_with_the_file_named(tmp_path):
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5 at all")
    assert not store.is_complete_shard(junk)
    with pytest.raises(InputError, match="junk.h5"):
        store.ShardReader(junk)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = 1
    with pytest.raises(InputError, match="other.h5"):
        store.load_shard(other)


def test_truncated_shard_is_not_complete(tmp_path):
    names, patches, hashes = _patches()
    path = store.write_shard(tmp_path / "t.h5", names, patches, hashes)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert not store.is_complete_shard(path)


def test_manifest_group_and_folder_manifest(tmp_path):
    names, patches, hashes = _patches()
    dup_name = format_name("vol", 0, 224, 0, 224, axis=1, slice_index=9)
    manifest = store.ShardManifest(
        names=names + [dup_name],
        sources=["/d/vol.nrrd"] * 5,
        hashes=np.concatenate([hashes, np.array([7], dtype=np.uint64)]),
        duplicate_of=["", "", "", "", names[0]],
    )
    store.write_shard(tmp_path / "vol.h5", names, patches, hashes, {"source": "/d/vol.nrrd"}, manifest=manifest)
    # a shard written without a manifest (e.g. by a later filtering stage) counts its patches as kept
    store.write_shard(tmp_path / "img.h5", ["im-LOC-2d-0-5_0-5"], [np.zeros((5, 5), np.uint8)], [3],
                      {"source": "/d/im.png"})
    (tmp_path / ".vol.h5.abc.part.h5").write_bytes(b"partial")
    out, n = store.rebuild_folder_manifest(tmp_path)
    assert n == 6
    rows = store.read_manifest(out)
    assert [r["name"] for r in rows][0] == "im-LOC-2d-0-5_0-5"
    by_name = {r["name"]: r for r in rows}
    dup = by_name[dup_name]
    assert dup["status"] == "duplicate" and dup["duplicate_of"] == names[0] and dup["hash"] == "0000000000000007"
    assert dup["axis"] == "1" and dup["slice"] == "9" and dup["x1"] == "224"
    assert by_name[names[2]]["hash"] == "ffffffffffffffff" and by_name[names[2]]["status"] == "kept"
    assert by_name["im-LOC-2d-0-5_0-5"]["axis"] == "2d" and by_name["im-LOC-2d-0-5_0-5"]["source"] == "/d/im.png"
    removed = store.remove_stale_temporaries(tmp_path)
    assert [p.name for p in removed] == [".vol.h5.abc.part.h5"]


def test_read_manifest_rejects_other_csv(tmp_path):
    p = tmp_path / "x.csv"
    p.write_text("a,b\n1,2\n")
    with pytest.raises(InputError, match="x.csv"):
        store.read_manifest(p)


@pytest.mark.parametrize("drop", ["names", "offsets", "manifest"])
def test_damaged_shards_are_named_not_skipped(tmp_path, drop):
    names, patches, hashes = _patches()
    manifest = store.ShardManifest(names=names, sources=["v"] * 4, hashes=hashes, duplicate_of=[""] * 4)
    good = store.write_shard(tmp_path / "a.h5", names, patches, hashes, manifest=manifest)
    bad = store.write_shard(tmp_path / "b.h5", names, patches, hashes, manifest=manifest)
    with h5py.File(bad, "a") as f:
        del f[drop]
    with pytest.raises(InputError, match=rf"b\.h5: damaged patch shard: /{drop} missing"):
        store.ShardReader(bad)
    assert store.is_complete_shard(good) and not store.is_complete_shard(bad)
    with pytest.raises(InputError, match=r"b\.h5: damaged"):
        store.rebuild_folder_manifest(tmp_path)  # not a manifest silently short of b.h5's rows
    assert not (tmp_path / store.MANIFEST_NAME).exists()


def test_shards_written_without_a_manifest_still_read(tmp_path):
    names, patches, hashes = _patches()
    path = store.write_shard(tmp_path / "c.h5", names, patches, hashes, {"source": "s"})
    assert store.ShardReader(path).manifest().names == names
