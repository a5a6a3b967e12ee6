"""dedupe.py: de-duplication across shards, its record of what each dropped patch duplicates, incremental runs."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from curation_scripts import load_script

from cellemnet.dataset import crossdedup, store
from cellemnet.dataset.names import format_name

DEDUPE = load_script("dedupe.py")


def _shard(folder, name, hashes, seed):
    rng = np.random.default_rng(seed)
    names = [format_name(name, 0, 8, 0, 8, axis=0, slice_index=i) for i in range(len(hashes))]
    patches = [rng.integers(0, 256, (8, 8), dtype=np.uint8) for _ in hashes]
    manifest = store.ShardManifest(names, [f"/data/{name}.nrrd"] * len(names), hashes, [""] * len(names))
    store.write_shard(folder / f"{name}.h5", names, patches, hashes, {"source": name}, manifest=manifest)
    return names, patches


def _contents(folder):
    return {p.relative_to(folder).as_posix(): (store.load_shard(p)["names"], store.load_shard(p)["hashes"].tolist())
            for p in store.list_shards(folder, recursive=True)}


def _assert_no_duplicates_left(folder, d=12):
    hashes = np.concatenate([store.ShardReader(p).hashes for p in store.list_shards(folder, recursive=True)])
    dist = np.bitwise_count(hashes[:, None] ^ hashes[None, :])
    np.fill_diagonal(dist, 64)
    assert dist.min() > d


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 2**63, 40, dtype=np.uint64) * np.uint64(2)
    b = np.concatenate([a[:10] ^ np.uint64(0b111), rng.integers(0, 2**63, 30, dtype=np.uint64)])  # 10 near copies of a
    root = tmp_path / "shards"
    (root / "sub").mkdir(parents=True)
    _shard(root, "alpha", a, 1)
    _shard(root / "sub", "beta", b, 2)
    return root


def test_cross_duplicates_are_dropped_and_recorded(folder, capsys):
    assert DEDUPE.main([str(folder), "-q"]) == 0
    assert "10 dropped" in capsys.readouterr().out
    alpha = store.ShardReader(folder / "alpha.h5")
    beta = store.ShardReader(folder / "sub" / "beta.h5")
    assert len(alpha) + len(beta) == 70
    rows = store.read_manifest(folder / "manifest.csv") + store.read_manifest(folder / "sub" / "manifest.csv")
    dups = [r for r in rows if r["status"] == "duplicate"]
    assert len(dups) == 10
    names = {"alpha.h5": set(alpha.names), "sub/beta.h5": set(beta.names)}
    for r in dups:
        shard, name = r["duplicate_of"].split(":", 1)
        assert name in names[shard] and not r["name"].startswith(name.split("-LOC-")[0])  # in the other shard
    assert sum(r.metadata.get("cross_dedup", {}).get("dropped", 0) for r in (alpha, beta)) == 10
    _assert_no_duplicates_left(folder)
    # nothing new: a second run changes nothing
    state = (folder / crossdedup.STATE_NAME).read_text()
    assert DEDUPE.main([str(folder), "-q"]) == 0
    assert "nothing new" in capsys.readouterr().out
    assert (folder / crossdedup.STATE_NAME).read_text() == state


def test_new_shards_are_compared_only_with_what_was_kept(folder):
    assert DEDUPE.main([str(folder), "-q"]) == 0
    kept_before = _contents(folder)
    alpha_hashes = store.ShardReader(folder / "alpha.h5").hashes
    gamma = np.concatenate([alpha_hashes[:5] ^ np.uint64(1 << 40), np.array([7, 7 ^ 3], dtype=np.uint64)])
    _shard(folder, "gamma", gamma, 3)
    report = crossdedup.cross_deduplicate(folder)
    assert report.new_shards == 1 and report.dropped == 6  # 5 copies of alpha + 1 near copy inside gamma
    after = _contents(folder)
    assert after["alpha.h5"] == kept_before["alpha.h5"] and after["sub/beta.h5"] == kept_before["sub/beta.h5"]
    assert len(after["gamma.h5"][1]) == 1 and after["gamma.h5"][1][0] in (7, 7 ^ 3)
    _assert_no_duplicates_left(folder)


def test_killed_run_is_finished_by_the_next_one(folder, tmp_path, monkeypatch):
    clean = tmp_path / "clean"
    shutil.copytree(folder, clean)
    _shard(folder, "delta", store.ShardReader(folder / "alpha.h5").hashes[:4] ^ np.uint64(1), 4)
    _shard(clean, "delta", store.ShardReader(clean / "alpha.h5").hashes[:4] ^ np.uint64(1), 4)
    crossdedup.cross_deduplicate(clean)

    real = crossdedup._rewrite
    calls = []

    def dies_after_one(*args):
        if calls:
            raise KeyboardInterrupt  # stands in for SIGKILL between two shard rewrites
        calls.append(args)
        real(*args)

    monkeypatch.setattr(crossdedup, "_rewrite", dies_after_one)
    with pytest.raises(KeyboardInterrupt):
        crossdedup.cross_deduplicate(folder)
    assert '"plan"' in (folder / crossdedup.STATE_NAME).read_text()
    monkeypatch.setattr(crossdedup, "_rewrite", real)
    report = crossdedup.cross_deduplicate(folder)
    assert report.resumed
    assert _contents(folder) == _contents(clean)
    for manifest in ("manifest.csv", "sub/manifest.csv"):
        assert (folder / manifest).read_text() == (clean / manifest).read_text()


def test_other_distance_is_refused_and_bad_shards_named(folder, capsys):
    assert DEDUPE.main([str(folder), "-q"]) == 0
    assert DEDUPE.main([str(folder), "-q", "-d", "5"]) == 2
    assert "-d 12" in capsys.readouterr().err
    (folder / "broken.h5").write_bytes(b"nope")
    assert DEDUPE.main([str(folder), "-q"]) == 1
    assert "broken.h5" in capsys.readouterr().out
