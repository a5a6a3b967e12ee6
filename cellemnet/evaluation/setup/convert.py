"""Turn each benchmark's published files into the layout the evaluation reads: one converter per kind of source.

Each `convert_*` function takes the downloaded file(s) (an archive, or the downloads folder) and an output folder,
plus the facts of the benchmark it converts (splits, names, crops) as parameters: those live in the benchmark's
module (cellemnet/evaluation/benchmarks/), which names its converter. Each writes

* 2D benchmarks: `{out}/{train,test}/{images,masks}` with images and masks paired by file name;
* 3D benchmarks: `{out}/3d/{split}/{images,masks}` volumes, and their xy (or all-plane) slices in
  `{out}/2d/{split}/{images,masks}` for training.

Binary masks hold 0/1; multi-class masks hold the class index. The rules are the paper's setup (see
evaluation/README.md); where it crashed or lost information this version says so next to the fix.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from cellemnet.errors import InputError
from cellemnet.evaluation.setup import slices
from cellemnet.evaluation.setup.download import extract_zip
from cellemnet.evaluation.setup.patches import list_images, patch_pairs
from cellemnet.io import atomic_path, read_image, read_volume, to_uint8, write_image, write_volume

# CREMI marks voxels that are not a synaptic cleft with the largest uint64.
CREMI_NO_CLEFT = np.uint64(0xFFFFFFFFFFFFFFFF)


# ------------------------------------------------------------------------------------------------ helpers
def find_folder_with(root: Path, child: str, archive: Path) -> Path:
    """The folder under root (root included) that has a child named `child`; an error naming the archive if none."""
    if (root / child).exists():
        return root
    for path in sorted(root.rglob(child)):
        return path.parent
    raise InputError(f"{archive}: unexpected content, no '{child}' inside; is it the right file?")


def copy_file(src: Path, dest: Path) -> None:
    with atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)


def white_to_one(mask: np.ndarray) -> np.ndarray:
    """Masks drawn in white: only exactly-255 pixels are foreground (edge and padding values below 255 are not)."""
    return (mask == 255).astype(np.uint8)


def zero_one(mask: np.ndarray) -> np.ndarray:
    """A binary mask stored as 0/255 becomes 0/1; label masks already holding small integers pass unchanged."""
    values = np.unique(mask)
    if values.size and set(values.tolist()) <= {0, 255}:
        return (mask == 255).astype(np.uint8)
    return mask.astype(np.uint8) if mask.dtype != np.uint8 and mask.max() <= 255 else mask


def pair_images_and_masks(
    image_dir: Path,
    mask_dir: Path,
    out_split: Path,
    mask_name: Callable[[str], str] = lambda name: name,
    image_name: Callable[[str], str] = lambda name: name,
    mask_rule: Callable[[np.ndarray], np.ndarray] = zero_one,
) -> int:
    """Copy images to out_split/images and write their converted masks to out_split/masks under the same names.

    `mask_name` maps a mask's file name to its image's; `image_name` then renames both. Every image must have a
    mask; a mask without an image is an error too, so a broken archive never yields a silently smaller benchmark.
    """
    images = _keyed(list_images(image_dir), image_name)
    masks = _keyed(list_images(mask_dir), lambda n: image_name(mask_name(n)))
    missing = sorted(set(images) - set(masks))
    if missing:
        raise InputError(f"{image_dir / missing[0]}: no mask for this image in {mask_dir}")
    extra = sorted(set(masks) - set(images))
    if extra:
        raise InputError(f"{masks[extra[0]]}: no image for this mask in {image_dir}")
    for name, image_path in images.items():
        copy_file(image_path, out_split / "images" / name)
        write_image(out_split / "masks" / name, mask_rule(read_image(masks[name])))
    return len(images)


def _keyed(paths: list[Path], rename: Callable[[str], str]) -> dict[str, Path]:
    """{final name: path}; two files that end up with the same name are an error, not a silent overwrite."""
    out: dict[str, Path] = {}
    for path in paths:
        name = rename(path.name)
        if name in out:
            raise InputError(f"{path}: gets the same name '{name}' as {out[name].name}")
        out[name] = path
    return out


# ------------------------------------------------------------------------------------------------ Lucchi++ / Kasthuri++
def lucchi_mask_name(name: str) -> str:
    """Lucchi++ masks are `N.png` while their images are `maskNNNN.png`."""
    stem, dot, ext = name.partition(".")
    if not stem.isdigit():
        raise InputError(f"Lucchi++ mask '{name}' is not named N.png as expected")
    return f"mask{int(stem):04d}.{ext}"


def same_name(name: str) -> str:
    return name


def convert_casser(archive: Path, out: Path, work: Path, folder_name: str,
                   mask_name: Callable[[str], str] = same_name) -> dict:
    """Lucchi++ and Kasthuri++ (Casser et al.): Train_In/Train_Out, Test_In/Test_Out of PNGs; white = mitochondria.

    `mask_name` maps a mask's file name to its image's; counts are named `{folder_name} {split}`.
    """
    src = find_folder_with(extract_zip(archive, work), "Train_In", archive)
    counts = {}
    for split, (images, masks) in {"train": ("Train_In", "Train_Out"), "test": ("Test_In", "Test_Out")}.items():
        counts[split] = pair_images_and_masks(src / images, src / masks, out / split, mask_name=mask_name,
                                              mask_rule=white_to_one)
    return {f"{folder_name} {k}": v for k, v in counts.items()}


# ------------------------------------------------------------------------------------------------ Perez (CHM)
def perez_name(name: str) -> str:
    """`prefix.999.png` -> `999.png`: drop everything up to the first dot, so images and labels share names."""
    head, dot, rest = name.partition(".")
    return rest if dot and "." in rest else name


def convert_perez(archive: Path, out: Path, work: Path, organelles: Mapping[str, str]) -> dict:
    """CHM supplemental data: {training_images, training_labels, test_images, ground_truth}/{organelle}/; each
    organelle folder of `organelles` goes to out/{its short name}/."""
    src = find_folder_with(extract_zip(archive, work), "training_images", archive)
    counts = {}
    for organelle, short in organelles.items():
        for split, (images, masks) in {"train": ("training_images", "training_labels"),
                                       "test": ("test_images", "ground_truth")}.items():
            counts[f"{short} {split}"] = pair_images_and_masks(
                src / images / organelle, src / masks / organelle, out / short / split,
                mask_name=perez_name, image_name=perez_name,
            )
    return counts


# ------------------------------------------------------------------------------------------------ Guay
def min_max_uint8(volume: np.ndarray) -> np.ndarray:
    """Per-volume min-max stretch to 0..255 (truncated), as the paper's setup converted the int16 platelet data."""
    volume = np.asarray(volume, dtype=np.float64)
    lo, hi = float(volume.min()), float(volume.max())
    if hi <= lo:
        return np.zeros(volume.shape, dtype=np.uint8)
    return ((volume - lo) / (hi - lo) * 255).astype(np.uint8)


def labels_uint8(labels: np.ndarray, source: Path) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise InputError(f"{source}: label values must lie in 0..255, got {labels.min()}..{labels.max()}")
    return labels.astype(np.uint8)


def convert_guay(archive: Path, out: Path, work: Path, splits: Mapping[str, str],
                 planes: Sequence[str] = ("xy",)) -> dict:
    """Platelet data: {split}-{images,labels}.tif (int16 images, uint16 labels 0..6) for each archive split of
    `splits` (archive name -> ours); volumes to out/3d/{split}, their slices on `planes` to out/2d/{split}."""
    src = find_folder_with(extract_zip(archive, work), "train-images.tif", archive)
    counts = {}
    for source_split, split in splits.items():
        image_path, label_path = src / f"{source_split}-images.tif", src / f"{source_split}-labels.tif"
        for p in (image_path, label_path):
            if not p.is_file():
                raise InputError(f"{archive}: '{p.name}' is missing from the archive")
        image, spacing = read_volume(image_path)
        labels, _ = read_volume(label_path)
        if labels.shape != image.shape:
            raise InputError(f"{label_path}: shape {labels.shape} differs from {image_path.name}'s {image.shape}")
        name = f"{source_split}-images.nrrd"  # labels take the image's name so the two pair up
        write_volume(out / "3d" / split / "images" / name, min_max_uint8(image), spacing)
        write_volume(out / "3d" / split / "masks" / name, labels_uint8(labels, label_path), spacing)
        counts[f"{split} slices"] = slices.slice_folder(out / "3d" / split / "images", out / "3d" / split / "masks",
                                                        out / "2d" / split, planes=tuple(planes))
    return counts


# ------------------------------------------------------------------------------------------------ UroCell
def urocell_file(downloads: Path, filename: Callable[[str, str], str], kind: str, volume: str) -> Path:
    path = downloads / filename(kind, volume)
    if not path.is_file():
        raise InputError(f"{path}: UroCell file missing (download step not run?)")
    return path


def image_uint8(volume: np.ndarray, source: Path) -> np.ndarray:
    """UroCell images are 8-bit data; other integer data within 0..255 is cast, anything else rescaled."""
    volume = np.asarray(volume)
    if volume.dtype == np.uint8:
        return volume
    if volume.size and np.all(np.mod(volume, 1) == 0) and volume.min() >= 0 and volume.max() <= 255:
        return volume.astype(np.uint8)
    return to_uint8(volume, name=str(source))


def urocell_labels(lyso: np.ndarray, mito: np.ndarray) -> np.ndarray:
    """0 background, 1 endolysosome, 2 mitochondrion; any non-zero value counts (instance ids too)."""
    labels = np.zeros(np.shape(lyso), dtype=np.uint8)
    labels[np.asarray(lyso) > 0] = 1
    labels[np.asarray(mito) > 0] = 2  # the original's lyso + 2*mito made 3 where both were drawn
    return labels


def convert_urocell(downloads: Path, out: Path, work: Path | None = None, *, splits: Mapping[str, Sequence[str]],
                    y_crop: Mapping[str, int], filename: Callable[[str, str], str],
                    planes: Sequence[str] = ("xy", "xz", "yz")) -> dict:
    """UroCell: data/lyso/mito NIfTI volumes per sub-volume (`filename(kind, volume)` in downloads), the
    sub-volumes of each split in `splits`; `y_crop` leading rows of a volume are cut (blank)."""
    counts = {}
    for split, volumes in splits.items():
        for volume in volumes:
            image_path = urocell_file(downloads, filename, "data", volume)
            image, spacing = read_volume(image_path)
            lyso, _ = read_volume(urocell_file(downloads, filename, "lyso", volume))
            mito, _ = read_volume(urocell_file(downloads, filename, "mito", volume))
            if lyso.shape != image.shape or mito.shape != image.shape:
                raise InputError(f"{image_path}: label volumes do not have the image's shape {image.shape}")
            labels = urocell_labels(lyso, mito)
            image = image_uint8(image, image_path)
            crop = y_crop.get(volume, 0)  # blank leading rows
            image, labels = image[:, crop:, :], labels[:, crop:, :]
            name = f"{volume}.nii.gz"
            write_volume(out / "3d" / split / "images" / name, image, spacing)
            write_volume(out / "3d" / split / "masks" / name, labels, spacing)
        counts[f"{split} slices"] = slices.slice_folder(out / "3d" / split / "images", out / "3d" / split / "masks",
                                                        out / "2d" / split, planes=tuple(planes))
    return counts


# ------------------------------------------------------------------------------------------------ CREMI
def read_cremi(path: Path) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """(raw uint8, clefts 0/1 uint8, spacing z,y,x in nm) of one CREMI sample file."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            for key in ("volumes/raw", "volumes/labels/clefts"):
                if key not in f:
                    raise InputError(f"{path}: no '{key}' dataset; is it a CREMI sample file?")
            raw_ds, clefts = f["volumes/raw"], f["volumes/labels/clefts"]
            if raw_ds.shape != clefts.shape:
                raise InputError(f"{path}: clefts shape {clefts.shape} differs from raw {raw_ds.shape}")
            raw = raw_ds[...]
            mask = np.empty(clefts.shape, dtype=np.uint8)
            for z in range(clefts.shape[0]):  # slice by slice: the uint64 labels are 8x the size of the raw data
                mask[z] = clefts[z] != CREMI_NO_CLEFT
            resolution = raw_ds.attrs.get("resolution")
    except OSError as exc:
        raise InputError(f"{path}: not a readable HDF5 file ({exc}); delete it and run again") from None
    spacing = tuple(float(v) for v in resolution) if resolution is not None and len(resolution) == 3 else (1.0,) * 3
    return raw.astype(np.uint8, copy=False), mask, spacing


def convert_cremi(downloads: Path, out: Path, work: Path | None = None, *, splits: Mapping[str, str],
                  planes: Sequence[str] = ("xy",)) -> dict:
    """CREMI sample files (`splits`: file name in downloads -> split): raw and synaptic clefts, saved with their
    voxel size as out/3d/{split}/{images,masks}/{sample}.nrrd, their slices on `planes` in out/2d/{split}."""
    counts = {}
    for filename, split in splits.items():
        path = downloads / filename
        if not path.is_file():
            raise InputError(f"{path}: CREMI file missing (download step not run?)")
        raw, mask, spacing = read_cremi(path)
        sample = Path(filename).stem
        write_volume(out / "3d" / split / "images" / f"{sample}.nrrd", raw, spacing)
        write_volume(out / "3d" / split / "masks" / f"{sample}.nrrd", mask, spacing)
    for split in dict.fromkeys(splits.values()):
        counts[f"{split} slices"] = slices.slice_folder(out / "3d" / split / "images", out / "3d" / split / "masks",
                                                        out / "2d" / split, planes=tuple(planes))
    return counts


# ------------------------------------------------------------------------------------------------ All Mitochondria
def binary_mask(labels: np.ndarray, label: int) -> np.ndarray:
    """(labels == label) as 0/1 uint8."""
    return (np.asarray(labels) == label).astype(np.uint8)


def guay_mito_and_cell(labels: np.ndarray) -> np.ndarray:
    """Guay labels -> 1 mitochondria, 2 the rest of the cell (cell and every organelle but mitochondria), 0 outside.

    With mask_prediction3d the evaluation then ignores everything outside the cell.
    """
    labels = np.asarray(labels)
    out = np.zeros(labels.shape, dtype=np.uint8)
    out[(labels == 1) | (labels > 2)] = 2
    out[labels == 2] = 1
    return out


def relabel_volume(src_image: Path, src_mask: Path, dest: Path, rule: Callable[[np.ndarray], np.ndarray]) -> None:
    copy_file(src_image, dest / "images" / src_image.name)
    mask, spacing = read_volume(src_mask)
    write_volume(dest / "masks" / src_mask.name, rule(np.asarray(mask)), spacing)


def convert_all_mito(
    data_root: Path,
    out: Path,
    work: Path | None = None,
    *,
    train: Sequence[tuple[str, int, str]],
    test2d: Mapping[str, str],
    test3d: Mapping[str, tuple[str, Callable[[np.ndarray], np.ndarray]]],
    patch_size: int = 256,
) -> dict:
    """A mix of benchmarks set up under data_root: training patches of each, and their test sets side by side.

    train: (training folder under data_root, its mitochondria label, patch-name prefix) per source; test2d: name ->
    2D test folder, copied to out/test/2d/{name}; test3d: name -> (3D test folder, mask rule), relabelled into
    out/test/3d/{name}.
    """
    counts = {}
    for folder, label, prefix in train:
        src = data_root / folder
        written, skipped = patch_pairs(src / "images", src / "masks", out / "train", label=label,
                                       crop=patch_size, prefix=f"{prefix}-")
        counts[f"train patches from {prefix}"] = written
        counts[f"empty patches skipped from {prefix}"] = skipped
    for name, folder in test2d.items():
        src, dest = data_root / folder, out / "test" / "2d" / name
        for kind in ("images", "masks"):
            for path in list_images(src / kind):
                copy_file(path, dest / kind / path.name)
        counts[f"test images {name}"] = len(list_images(dest / "images"))
    for name, (folder, rule) in test3d.items():
        src = data_root / folder
        volumes = sorted(p for p in (src / "images").iterdir() if not p.name.startswith("."))
        if not volumes:
            raise InputError(f"{src / 'images'}: no test volume")
        for image_path in volumes:
            relabel_volume(image_path, src / "masks" / image_path.name, out / "test" / "3d" / name, rule)
        counts[f"test volumes {name}"] = len(volumes)
    return counts
