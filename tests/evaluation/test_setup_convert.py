"""Benchmark conversion on tiny files written in each source's own layout (zip of PNGs, tif stacks, NIfTI, HDF5)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile

from cellemnet.errors import InputError
from cellemnet.evaluation import benchmarks
from cellemnet.evaluation.benchmarks import cremi, urocell
from cellemnet.evaluation.config import load_eval_config
from cellemnet.evaluation.setup import convert, pipeline
from cellemnet.evaluation.setup.download import RemoteFile
from cellemnet.evaluation.setup.layout import benchmark_paths
from cellemnet.io import read_image, read_volume, write_image, write_volume

RNG = np.random.default_rng(0)


def run_converter(dataset: str, source: Path, out: Path, work: Path | None = None) -> dict:
    """The registered dataset's shared converter, with the parameters its benchmark module gives it."""
    return benchmarks.dataset(dataset).run(source, out, work)


def png_bytes(array: np.ndarray, tmp: Path) -> bytes:
    path = tmp / "_tmp.png"
    write_image(path, array)
    return path.read_bytes()


def zip_tree(archive: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(archive, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return archive


def casser_zip(tmp: Path, top: str, lucchi_names: bool) -> Path:
    """Lucchi++/Kasthuri++ layout: {top}/Train_In, Train_Out, Test_In, Test_Out; masks are RGB with white objects."""
    files = {}
    for split in ("Train", "Test"):
        for i in range(2):
            image = RNG.integers(0, 255, (20, 24), dtype=np.uint8)
            mask = np.zeros((20, 24), np.uint8)
            mask[2:8, 3:9] = 255
            mask[10:12, 10:12] = 254  # anti-aliased edge: not foreground
            mask[15:18, 0:4] = 2  # Kasthuri's padding value: not foreground
            rgb = np.repeat(mask[..., None], 3, axis=2)
            name = f"mask{i:04d}.png"
            files[f"{top}/{split}_In/{name}"] = png_bytes(image, tmp)
            mask_name = f"{i}.png" if lucchi_names else name
            files[f"{top}/{split}_Out/{mask_name}"] = _rgb_png(rgb, tmp)
    return zip_tree(tmp / f"{top}.zip", files)


def _rgb_png(rgb: np.ndarray, tmp: Path) -> bytes:
    import cv2

    ok, enc = cv2.imencode(".png", rgb)
    assert ok
    return enc.tobytes()


def perez_zip(tmp: Path) -> Path:
    files = {}
    for organelle in ("mitochondria", "lysosomes", "nuclei", "nucleoli"):
        for images, masks in (("training_images", "training_labels"), ("test_images", "ground_truth")):
            for i in (7, 8):
                mask = np.zeros((16, 16), np.uint8)
                mask[4:9, 4:9] = 255
                files[f"supplemental_data/{images}/{organelle}/{organelle}_img.{i:03d}.png"] = png_bytes(
                    RNG.integers(0, 255, (16, 16), dtype=np.uint8), tmp)
                files[f"supplemental_data/{masks}/{organelle}/{organelle}_lbl.{i:03d}.png"] = png_bytes(mask, tmp)
    return zip_tree(tmp / "chm-supplemental_data.zip", files)


def guay_zip(tmp: Path) -> Path:
    files = {}
    for split in ("train", "eval", "test"):
        image = RNG.integers(-300, 900, (3, 16, 20)).astype(np.int16)
        labels = RNG.integers(0, 7, (3, 16, 20)).astype(np.uint16)
        for kind, array in (("images", image), ("labels", labels)):
            path = tmp / f"_{split}-{kind}.tif"
            tifffile.imwrite(path, array, photometric="minisblack")
            files[f"platelet_data/{split}-{kind}.tif"] = path.read_bytes()
    path = tmp / "_w.tif"
    tifffile.imwrite(path, np.ones((3, 16, 20), np.float32), photometric="minisblack")
    files["platelet_data/train-error-weights.tif"] = path.read_bytes()
    return zip_tree(tmp / "platelet_data_1219.zip", files)


def urocell_files(downloads: Path) -> dict[str, Path]:
    out = {}
    for volume in urocell.TRAIN + urocell.TEST:
        shape = (3, 60, 5)
        image = RNG.integers(0, 255, shape).astype(np.uint8)
        lyso = np.zeros(shape, np.uint8)
        lyso[:, 56:58, 1:2] = 1
        mito = np.zeros(shape, np.uint8)
        mito[:, 57:60, 2:5] = 4  # an instance id, not 1
        for kind, array in (("data", image), ("lyso", lyso), ("mito", mito)):
            name = urocell.filename(kind, volume)
            out[name] = write_volume(downloads / name, array, spacing=(15.0, 16.0, 16.0))
    return out


def cremi_files(downloads: Path) -> dict[str, Path]:
    out = {}
    for name in cremi.SPLITS:
        path = downloads / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(path, "w") as f:
            raw = f.create_dataset("volumes/raw", data=RNG.integers(0, 255, (2, 12, 12)).astype(np.uint8))
            raw.attrs["resolution"] = np.array([40.0, 4.0, 4.0])
            clefts = np.full((2, 12, 12), np.uint64(0xFFFFFFFFFFFFFFFF), dtype=np.uint64)
            clefts[1, 3:6, 3:6] = 17
            f.create_dataset("volumes/labels/clefts", data=clefts)
        out[path.name] = path
    return out


# ------------------------------------------------------------------------------------------------ per source
def test_lucchi_masks_become_0_1_and_take_the_image_names(tmp_path):
    archive = casser_zip(tmp_path, "Lucchi++", lucchi_names=True)
    counts = run_converter("lucchi_pp", archive, tmp_path / "out", tmp_path / "work")
    assert counts == {"lucchi_pp train": 2, "lucchi_pp test": 2}
    for split in ("train", "test"):
        images = sorted(p.name for p in (tmp_path / "out" / split / "images").iterdir())
        masks = sorted(p.name for p in (tmp_path / "out" / split / "masks").iterdir())
        assert images == masks == ["mask0000.png", "mask0001.png"]
    mask = read_image(tmp_path / "out" / "train" / "masks" / "mask0001.png")
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1}
    assert mask[2:8, 3:9].all() and mask.sum() == 36  # 254 edges and value-2 padding are background


def test_kasthuri_keeps_names_and_drops_padding_value(tmp_path):
    archive = casser_zip(tmp_path, "Kasthuri++", lucchi_names=False)
    run_converter("kasthuri_pp", archive, tmp_path / "out", tmp_path / "work")
    mask = read_image(tmp_path / "out" / "test" / "masks" / "mask0000.png")
    assert mask.sum() == 36 and mask[15:18, 0:4].max() == 0


def test_casser_archive_with_missing_mask_is_an_error_naming_the_image(tmp_path):
    archive = tmp_path / "Lucchi++.zip"
    zip_tree(archive, {"Lucchi++/Train_In/mask0000.png": png_bytes(np.zeros((4, 4), np.uint8), tmp_path),
                       "Lucchi++/Train_Out/.keep": b""})
    with pytest.raises(InputError, match="no images found|no mask"):
        run_converter("lucchi_pp", archive, tmp_path / "out", tmp_path / "work")


def test_wrong_archive_is_named(tmp_path):
    archive = zip_tree(tmp_path / "other.zip", {"readme.txt": b"hello"})
    with pytest.raises(InputError, match="other.zip.*Train_In"):
        run_converter("lucchi_pp", archive, tmp_path / "out", tmp_path / "work")


def test_perez_names_lose_their_prefix_and_pair_up(tmp_path):
    counts = run_converter("perez", perez_zip(tmp_path), tmp_path / "out", tmp_path / "work")
    assert counts["mito train"] == 2 and counts["nucleoli test"] == 2 and len(counts) == 8
    for short in ("mito", "lyso", "nuclei", "nucleoli"):
        for split in ("train", "test"):
            folder = tmp_path / "out" / short / split
            assert sorted(p.name for p in (folder / "images").iterdir()) == ["007.png", "008.png"]
            assert sorted(p.name for p in (folder / "masks").iterdir()) == ["007.png", "008.png"]
    mask = read_image(tmp_path / "out" / "lyso" / "test" / "masks" / "007.png")
    assert set(np.unique(mask)) == {0, 1} and mask.sum() == 25


def test_perez_name_rule():
    assert convert.perez_name("mito_img.999.png") == "999.png"
    assert convert.perez_name("999.png") == "999.png"


def test_guay_volumes_are_stretched_relabelled_and_sliced(tmp_path):
    counts = run_converter("guay", guay_zip(tmp_path), tmp_path / "out", tmp_path / "work")
    assert counts == {"train slices": 3, "valid slices": 3, "test slices": 3}
    image, _ = read_volume(tmp_path / "out" / "3d" / "valid" / "images" / "eval-images.nrrd")
    assert image.dtype == np.uint8 and image.min() == 0 and image.max() == 255
    labels, _ = read_volume(tmp_path / "out" / "3d" / "test" / "masks" / "test-images.nrrd")
    assert labels.dtype == np.uint8 and labels.max() <= 6
    slice_names = sorted(p.name for p in (tmp_path / "out" / "2d" / "train" / "images").iterdir())
    assert slice_names == [f"train-images_2_{i}.tiff" for i in range(3)]  # the last slice is included
    first = read_image(tmp_path / "out" / "2d" / "train" / "masks" / "train-images_2_0.tiff")
    vol_labels, _ = read_volume(tmp_path / "out" / "3d" / "train" / "masks" / "train-images.nrrd")
    np.testing.assert_array_equal(first, vol_labels[0])
    assert not any("weights" in p.name for p in (tmp_path / "out").rglob("*"))


def test_guay_min_max_matches_the_rule():
    volume = np.array([[[-10, 0], [10, 30]]], dtype=np.int16)
    np.testing.assert_array_equal(convert.min_max_uint8(volume), [[[0, 63], [127, 255]]])


def test_urocell_labels_crop_and_slices(tmp_path):
    downloads = tmp_path / "downloads"
    urocell_files(downloads)
    counts = run_converter("urocell", downloads, tmp_path / "out")
    out = tmp_path / "out"
    test_labels, spacing = read_volume(out / "3d" / "test" / "masks" / "fib1-0-0-0.nii.gz")
    assert test_labels.shape == (3, 48, 5)  # 12 blank leading rows cropped in y
    assert spacing == pytest.approx((15.0, 16.0, 16.0))
    assert set(np.unique(test_labels)) == {0, 1, 2}
    train_img, _ = read_volume(out / "3d" / "train" / "images" / "fib1-1-0-3.nii.gz")
    assert train_img.shape == (3, 6, 5) and train_img.dtype == np.uint8  # 54 rows cropped
    untouched, _ = read_volume(out / "3d" / "train" / "images" / "fib1-3-2-1.nii.gz")
    assert untouched.shape == (3, 60, 5)
    # all three planes: z slices + y slices + x slices of every volume
    assert counts["test slices"] == 3 + 48 + 5
    names = {p.name for p in (out / "2d" / "test" / "masks").iterdir()}
    assert {"fib1-0-0-0_2_0.tiff", "fib1-0-0-0_1_47.tiff", "fib1-0-0-0_0_4.tiff"} <= names
    yz = read_image(out / "2d" / "test" / "masks" / "fib1-0-0-0_0_4.tiff")
    np.testing.assert_array_equal(yz, test_labels[:, :, 4])


def test_urocell_overlap_is_mitochondria():
    lyso = np.array([[[1, 1, 0]]])
    mito = np.array([[[0, 3, 3]]])
    np.testing.assert_array_equal(convert.urocell_labels(lyso, mito), [[[1, 2, 2]]])


def test_cremi_clefts_binarised_with_spacing_and_sliced(tmp_path):
    downloads = tmp_path / "downloads"
    cremi_files(downloads)
    counts = run_converter("cremi", downloads, tmp_path / "out")
    assert counts == {"train slices": 4, "test slices": 2}
    mask, spacing = read_volume(tmp_path / "out" / "3d" / "test" / "masks" / "sample_C_20160501.nrrd")
    assert spacing == pytest.approx((40.0, 4.0, 4.0))  # the original dropped the voxel size
    assert mask.dtype == np.uint8 and mask.sum() == 9 and mask[1, 3:6, 3:6].all()
    assert (tmp_path / "out" / "2d" / "train" / "masks" / "sample_B_20160501_2_1.tiff").is_file()


def test_cremi_file_without_clefts_is_named(tmp_path):
    path = tmp_path / "sample_A_20160501.hdf"
    with h5py.File(path, "w") as f:
        f.create_dataset("volumes/raw", data=np.zeros((1, 2, 2), np.uint8))
    with pytest.raises(InputError, match="sample_A_20160501.hdf.*clefts"):
        convert.read_cremi(path)


def test_guay_relabel_for_all_mito():
    labels = np.array([0, 1, 2, 3, 4, 5, 6])
    np.testing.assert_array_equal(convert.guay_mito_and_cell(labels), [0, 2, 1, 2, 2, 2, 2])


# ------------------------------------------------------------------------------------------------ whole pipeline
@pytest.fixture
def served_sources(tmp_path, monkeypatch):
    """Every source file written tiny under server/, served by file:// URLs with their true checksums."""
    server = tmp_path / "server"
    server.mkdir()
    made = {
        "lucchi_pp.zip": casser_zip(server, "Lucchi++", True).rename(server / "lucchi_pp.zip"),
        "kasthuri_pp.zip": casser_zip(server, "Kasthuri++", False).rename(server / "kasthuri_pp.zip"),
        "chm-supplemental_data.zip": perez_zip(server),
        "platelet_data_1219.zip": guay_zip(server),
        **urocell_files(server),
        **cremi_files(server),
    }
    for name, dataset in list(benchmarks.DATASETS.items()):
        new = []
        for r in dataset.sources:
            path = made[r.filename]
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            # Perez and UroCell have no published checksum: keep it unknown so that it is recorded.
            new.append(RemoteFile(url=path.as_uri(), filename=r.filename,
                                  sha256=digest if (r.sha256 or r.md5) else None))
        monkeypatch.setitem(benchmarks.DATASETS, name, dataclasses.replace(dataset, sources=tuple(new)))
    return made


@pytest.mark.slow
def test_setup_script_builds_every_benchmark_and_resumes(tmp_path, served_sources, monkeypatch, capsys, root):
    import importlib.util

    spec = importlib.util.spec_from_file_location("setup_data", root / "evaluation/setup_benchmarks/setup_data.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    data_root = tmp_path / "data"
    monkeypatch.setenv("CELLEMNET_DATA_ROOT", str(data_root))
    assert script.main([]) == 0
    out = capsys.readouterr().out
    assert "all_mito: converted" in out
    for benchmark in benchmarks.BENCHMARKS:
        paths = benchmark_paths(benchmark)
        assert (paths["data_dir"] / "train" / "images").is_dir(), benchmark
        assert paths["test_dir"].is_dir(), benchmark
    assert (data_root / "guay" / "2d" / "valid" / "masks").is_dir()  # only guay has a valid split
    # the tracked benchmark configs find everything they need under the data root
    stages = {"2d": "infer2d", "3d": "infer3d", "mixed": "mixed"}
    for benchmark in benchmarks.BENCHMARKS.values():
        for stage in ("train", stages[benchmark.test_dim]):
            load_eval_config(benchmark.config, [f"data_root={data_root}"], stage=stage)
    cfg = load_eval_config(root / "evaluation" / "benchmark_configs" / "all_mito.yaml", [f"data_root={data_root}"])
    for name, dim in zip(cfg["benchmark_names"], cfg["benchmark_dimensions"]):  # all_mito's sub-benchmarks
        assert (Path(cfg["test_dir"]) / dim / name / "images").is_dir(), (name, dim)
        assert (Path(cfg["test_dir"]) / dim / name / "masks").is_dir(), (name, dim)
    # all_mito: patches from five sources with 0/1 masks, 2D test copies and relabelled 3D test volumes
    patches = sorted(p.name for p in (data_root / "all_mito" / "train" / "masks").iterdir())
    assert {n.split("-")[0] for n in patches} == {"perez_mito", "lucchi_pp", "kasthuri_pp", "urocell", "guay"}
    sample = read_image(data_root / "all_mito" / "train" / "masks" / patches[0])
    assert set(np.unique(sample)) <= {0, 1}
    assert (data_root / "all_mito" / "test" / "2d" / "lucchi_pp" / "masks" / "mask0000.png").is_file()
    guay_test, _ = read_volume(data_root / "all_mito" / "test" / "3d" / "guay" / "masks" / "test-images.nrrd")
    assert set(np.unique(guay_test)) <= {0, 1, 2}
    uro_test, _ = read_volume(data_root / "all_mito" / "test" / "3d" / "urocell" / "masks" / "fib1-0-0-0.nii.gz")
    assert set(np.unique(uro_test)) == {0, 1}
    # checksums of the unpublished files were recorded
    recorded = json.loads((data_root / "downloads" / "checksums.json").read_text())
    assert "chm-supplemental_data.zip" in recorded and "urocell-data-fib1-0-0-0.nii.gz" in recorded
    # a second run resumes: everything is skipped, nothing is rewritten
    marker = data_root / "lucchi_pp" / pipeline.MARKER
    before = marker.stat().st_mtime_ns
    assert script.main(["lucchi_pp", "--no-download"]) == 0
    assert "already set up" in capsys.readouterr().out
    assert marker.stat().st_mtime_ns == before


def test_failed_download_stops_with_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys, root):
    import importlib.util

    missing = RemoteFile(url=(tmp_path / "nowhere" / "lucchi_pp.zip").as_uri(), filename="lucchi_pp.zip")
    lucchi = dataclasses.replace(benchmarks.DATASETS["lucchi_pp"], sources=(missing,))
    monkeypatch.setitem(benchmarks.DATASETS, "lucchi_pp", lucchi)
    spec = importlib.util.spec_from_file_location("setup_data", root / "evaluation/setup_benchmarks/setup_data.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["lucchi_pp", "--data-root", str(tmp_path / "data")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and missing.url in err[0] and "by hand" in err[0]
    assert not (tmp_path / "data" / "lucchi_pp").exists()


def test_existing_folder_without_marker_is_not_overwritten(tmp_path, served_sources):
    data_root = tmp_path / "data"
    (data_root / "lucchi_pp").mkdir(parents=True)
    (data_root / "lucchi_pp" / "mine.txt").write_text("user data")
    with pytest.raises(InputError, match="--force"):
        pipeline.setup_datasets(["lucchi_pp"], data_root, progress=False, log=lambda s: None)
    assert (data_root / "lucchi_pp" / "mine.txt").read_text() == "user data"


def test_all_mito_needs_its_inputs_first(tmp_path):
    with pytest.raises(InputError, match="all_mito is built from"):
        pipeline.convert_dataset("all_mito", tmp_path, tmp_path / "downloads")


def test_no_download_needs_the_files_in_place(tmp_path, served_sources):
    with pytest.raises(InputError, match="downloads/lucchi_pp.zip: not found"):
        pipeline.setup_datasets(["lucchi_pp"], tmp_path / "data", download=False, log=lambda s: None)


def test_download_only_then_convert_offline(tmp_path, served_sources):
    data_root = tmp_path / "data"
    summary = pipeline.setup_datasets(["cremi"], data_root, convert_data=False, progress=False, log=lambda s: None)
    assert summary == {"cremi": {"status": "downloaded"}}
    assert not (data_root / "cremi").exists()
    assert len(list((data_root / "downloads").glob("sample_*.hdf"))) == 3
    for path in served_sources.values():  # the "network" goes away
        path.unlink()
    summary = pipeline.setup_datasets(["cremi"], data_root, download=False, progress=False, log=lambda s: None)
    assert summary["cremi"]["status"] == "converted"
    assert pipeline.is_complete(data_root / "cremi")
