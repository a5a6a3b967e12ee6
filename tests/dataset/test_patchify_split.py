"""A volume split into z ranges (patchify3d.py --z-range, then --merge) gives the shard of one job: same kept
patch names, pixels, hashes, manifest and metadata, whatever the cut points."""
from __future__ import annotations

import numpy as np
import pytest
from curation_scripts import load_script

from cellemnet.dataset import store
from cellemnet.dataset.patchify import cut_file, find_volumes, parse_z_range, part_file, z_ranges
from cellemnet.errors import CellEMNetError
from cellemnet.io import to_uint8, write_volume

P3 = load_script("patchify3d.py")


def _repetitive_volume(shape=(40, 96, 112), period=13, seed=0):
    """Textured slices that repeat every `period` slices (plus a little noise), so duplicates of a tile lie in
    other z ranges and the within-volume de-duplication must see across the split."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    base = gaussian_filter(rng.normal(size=(period, *shape[1:])), sigma=3)
    vol = np.concatenate([base] * (shape[0] // period + 1))[: shape[0]]
    return to_uint8(vol + rng.normal(0, 0.002, shape))


def _shard(path):
    data = store.load_shard(path)
    with store.ShardReader(path) as reader:
        manifest = reader.manifest()
    return (data["names"], [p.tobytes() for p in data["patches"]], data["hashes"].tolist(), data["metadata"],
            manifest.names, manifest.duplicate_of)


def _split_run(volume, out, ranges, split_cut=False):
    """Hash each z range as its own job, then merge (and with split_cut, cut each range as its own job too)."""
    parts = []
    for start, stop in ranges:
        assert P3.main([str(volume), str(out / "parts"), "-cs", "32", "-q", "--z-range", f"{start}:{stop}"]) == 0
        parts.append(str(part_file(out / "parts", "vol", (start, stop))))
    cuts = []
    if split_cut:
        for start, stop in ranges:
            assert P3.main([str(volume), str(out / "cuts"), "-cs", "32", "-q", "--merge", *parts,
                            "--z-range", f"{start}:{stop}"]) == 0
            cuts.append(str(cut_file(out / "cuts", "vol", (start, stop))))
        assert store.list_shards(out / "cuts") == []  # cut files are not shards of the corpus
    assert P3.main([str(volume), str(out), "-cs", "32", "-q", "--merge", *parts[::-1],
                    *(["--cuts", *cuts[::-1]] if cuts else [])]) == 0
    return out / "vol.h5"


@pytest.mark.parametrize("suffix", ["nrrd", "h5"])  # read whole, and lazily band by band
def test_k_z_ranges_give_exactly_the_kept_patches_of_one_job(tmp_path, suffix):
    vol = _repetitive_volume()
    volume = tmp_path / "v" / f"vol.{suffix}"
    write_volume(volume, vol if suffix == "nrrd" else vol.astype(np.float32) * 0.5 - 20)  # float: limits too
    assert P3.main([str(volume), str(tmp_path / "one"), "-cs", "32", "-q"]) == 0
    single = _shard(tmp_path / "one" / "vol.h5")
    names, _, _, _, all_tiles, duplicate_of = single
    assert 0 < len(names) < len(all_tiles) / 3  # the repeats were removed
    # duplicates whose exemplar lies in another third of the volume: the split must see across its cuts
    slice_of = {n: int(n.split("-LOC-")[1].split("_")[1]) for n in all_tiles}
    axis0 = [(n, d) for n, d in zip(all_tiles, duplicate_of) if d and "-LOC-0_" in n]
    assert any(abs(slice_of[n] - slice_of[d]) > 13 for n, d in axis0)

    three = z_ranges(40, 32, 3)
    assert three == [(0, 32), (32, 40)]  # 2 bands of 32 slices: at most 2 parts on band edges
    ranges = {"k1": [(0, 40)], "k2_bands": three, "k3_anywhere": [(0, 7), (7, 31), (31, 40)]}
    for label, cut in ranges.items():
        assert _shard(_split_run(volume, tmp_path / label, cut)) == single, label
    # the cutting split too: each range cuts its own exemplars, the merge only copies them
    assert _shard(_split_run(volume, tmp_path / "k3_cut", ranges["k3_anywhere"], split_cut=True)) == single


def test_z_ranges_cover_the_volume_on_band_edges():
    assert z_ranges(1000, 224, 3) == [(0, 448), (448, 672), (672, 1000)]
    assert z_ranges(100, 224, 4) == [(0, 100)]
    ranges = z_ranges(5000, 224, 7)
    assert ranges[0][0] == 0 and ranges[-1][1] == 5000 and len(ranges) == 7
    assert all(a[1] == b[0] and a[1] % 224 == 0 for a, b in zip(ranges, ranges[1:]))


def test_merge_refuses_missing_ranges_and_other_settings(tmp_path, capsys):
    volume = tmp_path / "v" / "vol.nrrd"
    write_volume(volume, _repetitive_volume((40, 64, 64)))
    for start, stop in ((0, 20), (20, 40)):
        assert P3.main([str(volume), str(tmp_path / "p"), "-cs", "32", "-q", "--z-range", f"{start}:{stop}"]) == 0
    first, second = (str(part_file(tmp_path / "p", "vol", r)) for r in ((0, 20), (20, 40)))
    assert P3.main([str(volume), str(tmp_path / "o"), "-cs", "32", "-q", "--merge", second]) == 2
    assert "z ranges do not follow each other" in capsys.readouterr().err
    assert P3.main([str(volume), str(tmp_path / "o"), "-cs", "32", "-d", "3", "-q", "--merge", first, second]) == 2
    assert "other settings" in capsys.readouterr().err
    assert not (tmp_path / "o" / "vol.h5").exists()
    assert P3.main([str(volume), str(tmp_path / "c"), "-cs", "32", "-q", "--merge", first, second,
                    "--z-range", "0:20"]) == 0
    assert P3.main([str(volume), str(tmp_path / "o"), "-cs", "32", "-q", "--merge", first, second, "--cuts",
                    str(cut_file(tmp_path / "c", "vol", (0, 20)))]) == 2  # the range 20:40 was not cut
    assert "the cut parts hold" in capsys.readouterr().err and not (tmp_path / "o" / "vol.h5").exists()
    assert P3.main([str(volume), str(tmp_path / "p"), "-cs", "32", "-q", "--z-range", "30:50"]) == 2
    assert "has only 40 slices" in capsys.readouterr().err
    with pytest.raises(CellEMNetError, match="START:STOP"):
        parse_z_range("12")
    assert find_volumes(tmp_path / "p") == []  # parts are never read back as volumes
