"""classify_patches end to end on shards written with store.write_shard: tiff and h5 outputs, ROI merging,
resume, and bad input (empty/corrupt shard, wrong weights) that stops with the file named and keeps outputs."""
import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cellemnet.dataset.classify import MANIFEST_NAME, classify_patches
from cellemnet.dataset.names import format_name
from cellemnet.dataset.quality import spoil_patch
from cellemnet.dataset.store import load_shard, write_shard
from cellemnet.errors import ConfigError, InputError
from cellemnet.io import read_image
from cellemnet.synthetic import make_image

SCRIPT = Path(__file__).resolve().parents[2] / "dataset" / "classify_patches.py"
SIZE = 96


def _patches(source: str, seed: int, n_good: int = 3, n_bad: int = 2):
    """n_good informative patches cut from a synthetic image, then n_bad uninformative ones; names 3D-style."""
    img, _ = make_image((SIZE * 2, SIZE * 2), look="tem", seed=seed)
    goods = [img[y:y + SIZE, x:x + SIZE] for y in (0, SIZE) for x in (0, SIZE)][:n_good]
    kinds = ("blank", "noise", "overexposed", "blurred")
    bads = [spoil_patch(goods[i % len(goods)], kinds[i % len(kinds)]) for i in range(n_bad)]
    patches = goods + bads
    names = [format_name(source, 0, SIZE, 0, SIZE, axis=0, slice_index=k) for k in range(len(patches))]
    labels = [True] * len(goods) + [False] * len(bads)
    return names, patches, labels


def make_sharddir(root: Path) -> tuple[Path, dict[str, bool], dict[str, np.ndarray]]:
    sharddir = root / "shards"
    truth, pixels = {}, {}
    for seed, source in enumerate(("cellA-ROI-x0-96_y0-96_z0-8", "cellA-ROI-x96-192_y0-96_z0-8", "tissueB")):
        names, patches, labels = _patches(source, seed)
        write_shard(sharddir / f"{source}.h5", names, patches, np.arange(len(names), dtype=np.uint64),
                    {"source": source})
        truth.update(zip(names, labels))
        pixels.update(zip(names, patches))
    return sharddir, truth, pixels


def _manifest(savedir: Path) -> list[dict]:
    with open(savedir / MANIFEST_NAME, newline="") as fh:
        return list(csv.DictReader(fh))


def test_tiff_output_merges_rois_and_keeps_informative_patches(tmp_path):
    sharddir, truth, pixels = make_sharddir(tmp_path)
    savedir = tmp_path / "final"
    r = classify_patches(sharddir, savedir, batch_size=2, workers=2, progress=False, log=lambda *_: None)
    assert r.n_shards == 3 and r.n_patches == 15
    assert r.n_kept == 9 and r.n_dropped == 6
    # both ROI shards of cellA land in one folder (the original kept only the first ROI)
    assert sorted(p.name for p in (savedir / "cellA").iterdir()) == sorted(
        f"{n}.tiff" for n, good in truth.items() if good and n.startswith("cellA"))
    assert len(list((savedir / "tissueB").iterdir())) == 3
    some = next(n for n, good in truth.items() if good)
    saved = read_image(savedir / "cellA" / f"{some}.tiff") if some.startswith("cellA") else None
    assert saved is not None and saved.dtype == np.uint8 and np.array_equal(saved, pixels[some])
    rows = _manifest(savedir)
    assert len(rows) == 15
    assert {r["name"]: r["decision"] == "keep" for r in rows} == truth
    assert all(0.0 <= float(r["score"]) <= 1.0 for r in rows)
    assert r.per_dataset == {"cellA": {"scored": 10, "kept": 6}, "tissueB": {"scored": 5, "kept": 3}}


def test_rerun_skips_and_resume_redoes_only_unfinished(tmp_path):
    sharddir, truth, _ = make_sharddir(tmp_path)
    savedir = tmp_path / "final"
    quiet = dict(progress=False, log=lambda *_: None)
    classify_patches(sharddir, savedir, **quiet)
    files = sorted(savedir.rglob("*.tiff"))
    mtimes = {p: p.stat().st_mtime_ns for p in files}
    again = classify_patches(sharddir, savedir, **quiet)
    assert again.n_shards_skipped == 3 and again.scored_this_run == 0 and again.n_kept == 9
    assert {p: p.stat().st_mtime_ns for p in files} == mtimes

    # simulate a run killed inside tissueB: its record and one of its tiffs are missing
    (savedir / ".classify" / "tissueB.h5.csv").unlink()
    lost = next((savedir / "tissueB").iterdir())
    lost.unlink()
    half_written = savedir / "tissueB" / f".{lost.name}.k1ll3d.part.tiff"  # what a killed atomic write leaves
    half_written.write_bytes(b"II*\x00\x08\x00\x00\x00")
    resumed = classify_patches(sharddir, savedir, **quiet)
    assert resumed.n_shards_skipped == 2 and resumed.scored_this_run == 5
    assert lost.is_file() and len(_manifest(savedir)) == 15
    assert not half_written.exists() and not list(savedir.rglob(".*part*"))

    with pytest.raises(ConfigError, match="other filter settings"):
        classify_patches(sharddir, savedir, threshold=0.7, **quiet)
    assert len(list(savedir.rglob("*.tiff"))) == 9


def test_h5_output_is_readable_with_the_store(tmp_path):
    sharddir, truth, pixels = make_sharddir(tmp_path)
    savedir = tmp_path / "final_h5"
    r = classify_patches(sharddir, savedir, fmt="h5", progress=False, log=lambda *_: None)
    outs = sorted(savedir.rglob("*.h5"))
    assert [p.relative_to(savedir).as_posix() for p in outs] == [
        "cellA/cellA-ROI-x0-96_y0-96_z0-8.h5", "cellA/cellA-ROI-x96-192_y0-96_z0-8.h5", "tissueB/tissueB.h5"]
    kept = {}
    for p in outs:
        shard = load_shard(p)
        assert shard["metadata"]["filter"]["method"] == "features"
        kept.update(zip(shard["names"], shard["patches"]))
    assert set(kept) == {n for n, good in truth.items() if good} and r.n_kept == len(kept)
    assert all(np.array_equal(kept[n], pixels[n]) for n in kept)
    assert all("::" in row["output"] for row in _manifest(savedir) if row["decision"] == "keep")


def test_corrupt_or_empty_shard_stops_with_its_name_and_keeps_outputs(tmp_path):
    sharddir, _, _ = make_sharddir(tmp_path)
    savedir = tmp_path / "final"
    classify_patches(sharddir, savedir, progress=False, log=lambda *_: None)
    before = sorted(p.relative_to(savedir) for p in savedir.rglob("*") if p.is_file())
    (sharddir / "zz-broken.h5").write_bytes(b"\x89HDF not really")
    with pytest.raises(InputError, match="zz-broken.h5"):
        classify_patches(sharddir, savedir, progress=False, log=lambda *_: None)
    (sharddir / "zz-broken.h5").write_bytes(b"")
    with pytest.raises(InputError, match=r"zz-broken.h5.*empty"):
        classify_patches(sharddir, savedir, progress=False, log=lambda *_: None)
    assert sorted(p.relative_to(savedir) for p in savedir.rglob("*") if p.is_file()) == before
    with pytest.raises(InputError, match="no patch shards"):
        classify_patches(tmp_path / "final" / "cellA", tmp_path / "x", progress=False)


def test_shard_with_no_patches_is_reported_not_fatal(tmp_path):
    sharddir, _, _ = make_sharddir(tmp_path)
    write_shard(sharddir / "nothing.h5", [], [], np.zeros(0, np.uint64))
    logs = []
    r = classify_patches(sharddir, tmp_path / "final", progress=False, log=logs.append)
    assert r.n_shards_empty == 1 and r.n_patches == 15
    assert any("nothing.h5" in line for line in logs)


def test_command_line_summary_and_errors(tmp_path):
    sharddir, _, _ = make_sharddir(tmp_path)
    savedir = tmp_path / "final"
    proc = subprocess.run([sys.executable, str(SCRIPT), str(sharddir), str(savedir), "-p", "2", "--no-progress"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "kept 9 of 15 patches" in proc.stdout and "cellA: kept 6 of 10" in proc.stdout
    (sharddir / "bad.h5").write_bytes(b"garbage")
    proc = subprocess.run([sys.executable, str(SCRIPT), str(sharddir), str(savedir), "--no-progress"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "bad.h5" in proc.stderr and "Traceback" not in proc.stderr
    assert len(list(savedir.rglob("*.tiff"))) == 9


def test_wrong_shape_weights_name_the_file_before_anything_is_written(tmp_path):
    import torch
    from torchvision.models import resnet34

    sharddir, _, _ = make_sharddir(tmp_path)
    wrong = tmp_path / "wrong.pth"
    torch.save(resnet34(weights=None).state_dict(), wrong)  # fc 512 -> 1000, not the 1-logit head
    with pytest.raises(InputError, match=r"wrong.pth.*fc"):
        classify_patches(sharddir, tmp_path / "nn", weights=wrong, progress=False, log=lambda *_: None)
    assert not (tmp_path / "nn").exists()


def test_nn_method_end_to_end_on_cpu(tmp_path):
    import torch

    from cellemnet.dataset.quality import build_resnet34_classifier

    model = build_resnet34_classifier()
    torch.nn.init.zeros_(model.fc.weight)
    torch.nn.init.constant_(model.fc.bias, -3.0)  # drops everything
    weights = tmp_path / "clf.pth"
    torch.save(model.state_dict(), weights)
    sharddir = tmp_path / "shards"
    names, patches, _ = _patches("one", 0, n_good=2, n_bad=1)
    write_shard(sharddir / "one.h5", names, patches, np.zeros(3, np.uint64))
    r = classify_patches(sharddir, tmp_path / "final", weights=weights, device="cpu", batch_size=2,
                         progress=False, log=lambda *_: None)
    assert r.n_patches == 3 and r.n_kept == 0
    rows = _manifest(tmp_path / "final")
    assert all(abs(float(row["score"]) - 1 / (1 + np.exp(3.0))) < 1e-4 for row in rows)


@pytest.mark.shared_data
def test_real_em_shards_end_to_end(shared_data, tmp_path):
    """ISBI slices cut to 224 crops in two ROI shards of one dataset, plus a shard of degraded copies."""
    from cellemnet.dataset.quality import UNINFORMATIVE_KINDS

    rng = np.random.default_rng(0)
    sharddir = tmp_path / "shards"
    real_names = []
    bad_names, bad_patches = [], []
    for roi, slices in (("isbi-ROI-z0-15", range(0, 15, 3)), ("isbi-ROI-z15-30", range(15, 30, 3))):
        names, patches = [], []
        for z in slices:
            img = read_image(shared_data / "isbi2012" / "train" / "images" / f"slice{z:02d}.png")
            for y0, x0 in ((0, 0), (0, 288), (288, 0), (288, 288)):
                names.append(format_name(roi, y0, y0 + 224, x0, x0 + 224, axis=0, slice_index=z))
                patches.append(img[y0:y0 + 224, x0:x0 + 224])
                kind = UNINFORMATIVE_KINDS[len(bad_names) % len(UNINFORMATIVE_KINDS)]
                bad_names.append(format_name("degraded", y0, y0 + 224, x0, x0 + 224, axis=0,
                                             slice_index=len(bad_names)))
                bad_patches.append(spoil_patch(patches[-1], kind, rng))
        write_shard(sharddir / f"{roi}.h5", names, patches, np.zeros(len(names), np.uint64))
        real_names += names
    write_shard(sharddir / "degraded.h5", bad_names, bad_patches, np.zeros(len(bad_names), np.uint64))
    r = classify_patches(sharddir, tmp_path / "final", workers=2, progress=False, log=lambda *_: None)
    kept = r.per_dataset["isbi"]["kept"] / r.per_dataset["isbi"]["scored"]
    dropped = 1 - r.per_dataset["degraded"]["kept"] / r.per_dataset["degraded"]["scored"]
    print(f"\nreal ISBI patches kept {kept:.1%} of {len(real_names)}; degraded copies dropped {dropped:.1%}")
    assert kept >= 0.95 and dropped >= 0.95
    assert len(list((tmp_path / "final" / "isbi").glob("*.tiff"))) == r.per_dataset["isbi"]["kept"]


def test_output_folder_that_is_the_shard_folder_is_refused_by_name(tmp_path):
    sharddir, _, _ = make_sharddir(tmp_path)
    for savedir in (sharddir, tmp_path):  # the shard folder itself, or a folder above it
        with pytest.raises(InputError, match="the output folder is \\(or holds\\) the shard folder"):
            classify_patches(sharddir, savedir, progress=False, log=lambda *_: None)
    assert sorted(p.name for p in sharddir.iterdir()) == sorted(p.name for p in sharddir.glob("*.h5"))
    inside = sharddir / "final"  # a subfolder of SHARDDIR stays allowed (and is not read back as input)
    classify_patches(sharddir, inside, progress=False, log=lambda *_: None)
    assert (inside / MANIFEST_NAME).is_file()
