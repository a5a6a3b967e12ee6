"""Deterministic EM-like synthetic images and volumes with ground-truth masks, for tests and the demo.

The scene is built in a 3D world (an image is one section of it): cells from a warped Voronoi tessellation with
dark membranes, nuclei with an envelope and heterochromatin, elongated mitochondria with a dark outer rim and
cristae stripes across their long axis, clusters of round vesicles, fine cytoplasm texture; then the "look" of an
imaging project is applied (blur, contrast, uneven illumination, noise, curtaining, section-to-section jitter,
inverted contrast). Same arguments and seed -> identical output.

Masks (bool, same shape as the image): "mito", "nucleus", "membrane", "vesicle".

Only numpy/scipy vectorised operations: a 512x512 image takes a few tens of milliseconds.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy import ndimage

from cellemnet.io import write_image, write_volume

MASK_KEYS = ("mito", "nucleus", "membrane", "vesicle")


@dataclass(frozen=True)
class Look:
    """How one (fake) imaging project renders the same biology. Intensities are on a 0 (dark) .. 1 scale."""

    name: str
    scale: float  # structure size multiplier (magnification)
    cytoplasm: float
    nucleus: float
    heterochromatin: float
    mito_matrix: float
    cristae: float
    mito_rim: float
    vesicle_lumen: float
    vesicle_rim: float
    membrane_depth: float  # how much membranes darken (0..1)
    membrane_width: float  # pixels
    texture: float
    contrast: float
    blur: float
    noise: float
    illumination: float
    curtaining: float = 0.0
    section_jitter: float = 0.0
    invert: bool = False
    gamma: float = 1.0
    anisotropy: float = 1.0  # z spacing / xy spacing that suits the look (make_corpus uses it)


_LOOKS: dict[str, Look] = {
    # conventional TEM of resin sections: bright background, dark membranes, greyish mitochondria
    "tem": Look("tem", 1.0, 0.66, 0.58, 0.40, 0.40, 0.62, 0.22, 0.78, 0.30, 0.60, 2.2, 0.035, 1.0, 0.9, 0.045,
                0.18),
    # raw back-scattered SEM: contrast inverted (membranes bright on a dark background)
    "sem_inverted": Look("sem_inverted", 0.8, 0.62, 0.55, 0.40, 0.42, 0.60, 0.25, 0.75, 0.32, 0.55, 1.8, 0.03,
                         1.1, 1.1, 0.06, 0.25, invert=True, gamma=1.2),
    # FIB-SEM: isotropic, smoother, vertical curtaining stripes from the ion beam
    "fib_sem": Look("fib_sem", 0.7, 0.60, 0.52, 0.38, 0.36, 0.56, 0.20, 0.74, 0.28, 0.55, 1.6, 0.025, 1.0, 1.3,
                    0.05, 0.15, curtaining=0.05),
    # serial-section TEM: thick sections (anisotropic), grainy, high contrast, section-to-section jitter
    "sstem": Look("sstem", 1.2, 0.70, 0.60, 0.38, 0.38, 0.66, 0.18, 0.82, 0.25, 0.70, 2.8, 0.05, 1.3, 0.7, 0.07,
                  0.22, section_jitter=0.04, anisotropy=6.0, gamma=0.9),
    # cryo-EM / cryo-ET: low contrast, heavy noise, soft
    "cryo": Look("cryo", 1.4, 0.52, 0.50, 0.45, 0.44, 0.52, 0.38, 0.56, 0.40, 0.30, 2.0, 0.02, 0.6, 1.6, 0.16,
                 0.08),
}
LOOKS: tuple[str, ...] = tuple(_LOOKS)


def get_look(look: str | Look) -> Look:
    if isinstance(look, Look):
        return look
    if look not in _LOOKS:
        raise ValueError(f"unknown look {look!r}; choose one of {', '.join(LOOKS)}")
    return _LOOKS[look]


# --------------------------------------------------------------------------------------------------------------
# Random fields
# --------------------------------------------------------------------------------------------------------------
def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: Sequence[float]) -> np.ndarray:
    """Gaussian-filtered white noise with unit standard deviation."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="wrap")
    std = float(field.std())
    return field / std if std > 0 else field


def _cubic_weights(n_out: int, n_coarse: int, period: float) -> np.ndarray:
    """(n_out, n_coarse) matrix that cubic-spline-interpolates a coarse 1D grid at spacing `period`."""
    if n_coarse == 1:
        return np.ones((n_out, 1), dtype=np.float32)
    positions = np.arange(n_out, dtype=np.float64) / period + 1.0
    basis = np.eye(n_coarse)
    return np.stack([ndimage.map_coordinates(basis[k], [positions], order=3, mode="nearest")
                     for k in range(n_coarse)], axis=1).astype(np.float32)


def _low_frequency(rng: np.random.Generator, shape: tuple[int, ...], period: Sequence[float]) -> np.ndarray:
    """A smooth random field (about unit amplitude) varying over about `period` pixels per axis.

    Random values on a coarse grid, upsampled separably with cubic splines (three small matrix products)."""
    coarse_shape = tuple(max(1, int(np.ceil(n / p)) + 3) if n > 1 else 1 for n, p in zip(shape, period))
    field = rng.standard_normal(coarse_shape).astype(np.float32)
    wz, wy, wx = (_cubic_weights(n, c, p) for n, p, c in zip(shape, period, coarse_shape))
    # einsum with two operands runs single-threaded loops: steadier than BLAS threads on a busy machine
    field = np.einsum("zi,ijk->zjk", wz, field)
    field = np.einsum("yj,zjk->zyk", wy, field)
    return np.einsum("xk,zyk->zyx", wx, field)


# --------------------------------------------------------------------------------------------------------------
# Scene
# --------------------------------------------------------------------------------------------------------------
def _rotation(rng: np.random.Generator, tilt: float) -> np.ndarray:
    """Rotation whose first column (the long axis) lies near the xy plane: in-plane angle, small z tilt."""
    theta = rng.uniform(0, np.pi)
    phi = rng.uniform(-tilt, tilt)
    long_axis = np.array([np.sin(phi), np.cos(phi) * np.sin(theta), np.cos(phi) * np.cos(theta)])  # (z, y, x)
    helper = np.array([1.0, 0.0, 0.0]) if abs(long_axis[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    second = np.cross(long_axis, helper)
    second /= np.linalg.norm(second)
    third = np.cross(long_axis, second)
    return np.stack([long_axis, second, third], axis=1)


def _ellipsoid(center: np.ndarray, radii: np.ndarray, rotation: np.ndarray, shape: tuple[int, int, int],
               spacing: np.ndarray):
    """Normalised radius^2 and long-axis coordinate of an ellipsoid, evaluated in its bounding box.

    Returns (bbox slices, r2, u) or None when the box misses the volume. `center` and `radii` are in world
    units (xy pixels), the box in voxel indices.
    """
    reach = float(radii.max())
    lo = np.floor((center - reach) / spacing).astype(int)
    hi = np.ceil((center + reach) / spacing).astype(int) + 1
    lo = np.maximum(lo, 0)
    hi = np.minimum(hi, shape)
    if np.any(hi <= lo):
        return None
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    axes = [np.arange(a, b, dtype=np.float32) * s - c for a, b, s, c in zip(lo, hi, spacing, center)]
    dz, dy, dx = axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]
    r2 = np.zeros([b - a for a, b in zip(lo, hi)], dtype=np.float32)
    u = None
    for k in range(3):
        q = rotation[0, k] * dz + rotation[1, k] * dy + rotation[2, k] * dx
        if k == 0:
            u = q
        r2 += (q / radii[k]) ** 2
    return box, r2, u


def _warped_voronoi(shape: tuple[int, int, int], spacing: np.ndarray, seeds: np.ndarray, warp_y: np.ndarray,
                    warp_x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cell labels (1..n) of a Voronoi tessellation seen through a smooth in-plane warp, and each voxel's
    distance to the nearest cell boundary.

    The distance to the boundary between the nearest seed a and the second nearest b is
    (|p-b|^2 - |p-a|^2) / (2 |a-b|), exact for a Voronoi diagram; with the warp it is a close approximation,
    which avoids two full distance transforms.
    """
    zz = (np.arange(shape[0], dtype=np.float32)[:, None, None] + 0.5) * spacing[0]
    yy = (np.arange(shape[1], dtype=np.float32)[None, :, None] + 0.5) * spacing[1] + warp_y
    xx = (np.arange(shape[2], dtype=np.float32)[None, None, :] + 0.5) * spacing[2] + warp_x
    best = np.full(shape, np.inf, dtype=np.float32)
    second = np.full(shape, np.inf, dtype=np.float32)
    best_id = np.zeros(shape, dtype=np.int32)
    second_id = np.zeros(shape, dtype=np.int32)
    d2 = np.empty(shape, dtype=np.float32)
    tmp = np.empty(shape, dtype=np.float32)
    closer = np.empty(shape, dtype=bool)
    runner_up = np.empty(shape, dtype=bool)
    for k, (sz, sy, sx) in enumerate(seeds.astype(np.float32)):
        np.subtract(yy, sy, out=d2)
        np.square(d2, out=d2)
        np.subtract(xx, sx, out=tmp)
        np.square(tmp, out=tmp)
        d2 += tmp
        d2 += (zz - sz) ** 2
        np.less(d2, best, out=closer)
        np.less(d2, second, out=runner_up)
        runner_up &= ~closer
        # runner-up: d2 becomes the second; closer: the old best becomes the second, d2 the best
        np.copyto(second, d2, where=runner_up)
        np.copyto(second_id, k, where=runner_up)
        np.copyto(second, best, where=closer)
        np.copyto(second_id, best_id, where=closer)
        np.copyto(best, d2, where=closer)
        np.copyto(best_id, k, where=closer)
    separation = np.linalg.norm(seeds[:, None, :] - seeds[None, :, :], axis=2).astype(np.float32)
    distance = (second - best) / (2.0 * np.maximum(separation[best_id, second_id], 1e-3))
    return best_id + 1, distance


def _render(shape: tuple[int, int, int], look: Look, seed: int, spacing: Sequence[float]):
    # Longer than 80 lines on purpose: one generator draws cells, nuclei, mitochondria, vesicles and membranes in a
    # fixed order, and that order is what makes seed s give the same data in every release (tests, figures and the
    # recorded demo numbers depend on it); the sections below are marked, each is a few lines.
    rng = np.random.default_rng(seed)
    z, y, x = shape
    spacing = np.asarray(spacing, dtype=np.float32)
    spacing = spacing / spacing[-1]  # world unit = one x pixel
    world = np.asarray(shape, dtype=np.float32) * spacing
    flat = z == 1
    s = look.scale

    # ---- cells: Voronoi of random seeds, boundaries warped by a smooth displacement field
    cell_size = 170.0 * s
    margin = 0.4 * cell_size  # seeds also lie a little outside the field of view, so cells are cut by its edge
    low = np.array([0.0, -margin, -margin], dtype=np.float32)
    high = np.array([world[0], world[1] + margin, world[2] + margin], dtype=np.float32)
    if flat:
        low[0] = high[0] = 0.5
    extent = high - low
    area_like = extent[1] * extent[2] if flat else float(np.prod(np.maximum(extent, cell_size)))
    n_cells = max(3, int(round(area_like / (cell_size ** (2 if flat else 3)))))
    seed_world = (low + rng.random((n_cells, 3)) * extent).astype(np.float32)
    warp = 0.18 * cell_size
    period = (max(1.0, cell_size / spacing[0]), cell_size / 1.5, cell_size / 1.5)
    labels, membrane_dist = _warped_voronoi(shape, spacing, seed_world,
                                            warp * _low_frequency(rng, shape, period),
                                            warp * _low_frequency(rng, shape, period))
    width = look.membrane_width * max(0.75, s)
    membrane_profile = np.exp(-((membrane_dist / width) ** 2))
    membrane = membrane_dist <= 0.8 * width
    interior = membrane_dist > 1.6 * width

    masks = {key: np.zeros(shape, dtype=bool) for key in MASK_KEYS}
    image = np.full(shape, look.cytoplasm, dtype=np.float32)
    texture_sigma = (max(0.5, 1.5 / spacing[0]) if not flat else 0.0, 1.5, 1.5)
    image += look.texture * _smooth_noise(rng, shape, texture_sigma)

    # ---- nuclei: ellipsoids around a few cell centres, with a dark envelope and heterochromatin
    n_nuclei = int(rng.integers(0, 2)) + (1 if n_cells > 6 else 0) if flat else max(1, n_cells // 6)
    envelope = np.zeros(shape, dtype=bool)
    for cell in rng.permutation(n_cells)[:n_nuclei]:
        radii = np.array([rng.uniform(0.30, 0.40), rng.uniform(0.24, 0.32), rng.uniform(0.24, 0.32)]) * cell_size
        found = _ellipsoid(seed_world[cell].astype(np.float32), radii, _rotation(rng, 0.4), shape, spacing)
        if found is None:
            continue
        box, r2, _ = found
        inside = (r2 <= 1.0) & (labels[box] == cell + 1) & interior[box]
        masks["nucleus"][box] |= inside
        envelope[box] |= inside & (r2 > 0.86)
    if masks["nucleus"].any():
        chromatin = _smooth_noise(rng, shape, (1.0 if not flat else 0.0, 4.0 * s, 4.0 * s)) > 0.9
        nucleus = masks["nucleus"]
        image[nucleus] = look.nucleus + 0.6 * (image[nucleus] - look.cytoplasm)
        image[nucleus & chromatin] = look.heterochromatin
        image[envelope] = look.heterochromatin - 0.08

    # ---- mitochondria: elongated ellipsoids inside cytoplasm, dark rim, cristae across the long axis
    free = interior & ~masks["nucleus"]
    candidates = np.flatnonzero(free)
    area_px = y * x * (z if not flat else 1)
    world_volume = float(np.prod(world))
    # about 8% of the cytoplasm: one mitochondrion covers ~1150 s^2 px^2 in a section, ~16000 s^3 px^3 in 3D
    n_mito = 2 + int(area_px / (9000.0 * s * s) if flat else 0.16 * world_volume / (16000.0 * s ** 3))
    mito_field = np.zeros(shape, dtype=np.float32)
    for _ in range(n_mito if candidates.size else 0):
        centre_index = np.unravel_index(candidates[rng.integers(candidates.size)], shape)
        centre = (np.asarray(centre_index, dtype=np.float32) + 0.5) * spacing
        radii = np.array([rng.uniform(20, 50), rng.uniform(8, 13), rng.uniform(8, 13)], dtype=np.float32) * s
        found = _ellipsoid(centre, radii, _rotation(rng, 0.5), shape, spacing)
        if found is None:
            continue
        box, r2, u = found
        inside = (r2 <= 1.0) & (labels[box] == labels[centre_index]) & free[box]
        if not inside.any():
            continue
        period_px = rng.uniform(7, 11) * s
        wobble = rng.uniform(0, 2 * np.pi)
        cristae = np.cos(2 * np.pi * u / period_px + wobble) > 0.45
        value = np.where(cristae, look.cristae, look.mito_matrix).astype(np.float32)
        value = np.where(r2 > 0.72, look.mito_rim, value)
        region = mito_field[box]
        region[inside] = value[inside]
        masks["mito"][box] |= inside
    mito = masks["mito"]
    image[mito] = mito_field[mito] + 0.5 * (image[mito] - look.cytoplasm)

    # ---- vesicles: clusters of small spheres with a dark rim and a light lumen
    free &= ~mito
    candidates = np.flatnonzero(free)
    n_clusters = 1 + int(area_px / (45000.0 * s * s) if flat else world_volume / (3e5 * s ** 3))
    for _ in range(n_clusters if candidates.size else 0):
        centre_index = np.unravel_index(candidates[rng.integers(candidates.size)], shape)
        centre = (np.asarray(centre_index, dtype=np.float32) + 0.5) * spacing
        for _ in range(int(rng.integers(4, 12))):
            offset = rng.normal(0, 18 * s, 3).astype(np.float32)
            if flat:
                offset[0] = rng.normal(0, 3 * s)
            radius = np.float32(rng.uniform(3.5, 7.0) * s)
            found = _ellipsoid(centre + offset, np.array([radius] * 3), np.eye(3), shape, spacing)
            if found is None:
                continue
            box, r2, _ = found
            inside = (r2 <= 1.0) & free[box]
            if not inside.any():
                continue
            region = image[box]
            region[inside] = np.where(r2[inside] > 0.5, look.vesicle_rim, look.vesicle_lumen)
            masks["vesicle"][box] |= inside

    # ---- membranes darken everything they cross
    image *= 1.0 - look.membrane_depth * membrane_profile
    masks["membrane"] = membrane
    return image, masks, rng


def _apply_look(image: np.ndarray, look: Look, rng: np.random.Generator) -> np.ndarray:
    """Imaging: blur, contrast, uneven illumination, curtaining, section jitter, noise, inversion -> uint8."""
    z, y, x = image.shape
    image = ndimage.gaussian_filter(image, (0, look.blur, look.blur))
    mean = float(image.mean())
    image = mean + look.contrast * (image - mean)
    span = max(y, x) / 1.5
    illumination = _low_frequency(rng, (1 if z == 1 else max(1, z), y, x), (max(4.0, z / 2.0), span, span))
    image *= 1.0 + look.illumination * np.tanh(illumination) * 0.8
    if look.curtaining:
        stripes = ndimage.gaussian_filter1d(rng.standard_normal((z, 1, x)).astype(np.float32), 1.2, axis=2)
        image += look.curtaining * stripes
    if look.section_jitter and z > 1:
        image += look.section_jitter * rng.standard_normal((z, 1, 1)).astype(np.float32)
    image += look.noise * rng.standard_normal(image.shape).astype(np.float32)
    if look.invert:
        image = 1.0 - image
    np.clip(image, 0.0, 1.0, out=image)
    if look.gamma != 1.0:
        image **= look.gamma
    return np.rint(image * 255.0).astype(np.uint8)


def make_volume(shape: Sequence[int] = (24, 256, 256), look: str | Look = "tem", seed: int = 0,
                spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A (z, y, x) uint8 EM-like volume and its bool masks; structures are continuous through z.

    `spacing` (z, y, x) sets the geometry: with (5, 1, 1) each section is 5 pixels thick, so structures
    change faster from section to section (an anisotropic stack such as ssTEM).
    """
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape must be (z, y, x) with positive sizes, got {shape}")
    look = get_look(look)
    image, masks, rng = _render(shape, look, seed, spacing)  # type: ignore[arg-type]
    return _apply_look(image, look, rng), masks


def make_image(shape: Sequence[int] = (512, 512), look: str | Look = "tem",
               seed: int = 0) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A (y, x) uint8 EM-like image and its bool masks ("mito", "nucleus", "membrane", "vesicle")."""
    shape = tuple(int(n) for n in shape)
    if len(shape) != 2 or min(shape) < 8:
        raise ValueError(f"shape must be (y, x) with sizes >= 8, got {shape}")
    volume, masks = make_volume((1, *shape), look, seed)
    return volume[0], {key: mask[0] for key, mask in masks.items()}


def make_uninformative(shape: Sequence[int] = (512, 512), kind: str = "resin", seed: int = 0) -> np.ndarray:
    """An image with no cellular content, for curation to drop: "resin" (flat, faint noise and shading),
    "noise" (pure speckle) or "saturated" (nearly all white)."""
    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in shape)
    if kind == "resin":
        shading = 0.015 * _low_frequency(rng, (1, *shape), (1, shape[0] / 1.5, shape[1] / 1.5))[0]
        image = 0.8 + shading + 0.01 * rng.standard_normal(shape)
    elif kind == "noise":
        image = 0.5 + 0.2 * rng.standard_normal(shape)
    elif kind == "saturated":
        image = 0.995 + 0.004 * rng.standard_normal(shape)
    else:
        raise ValueError(f"unknown kind {kind!r}; choose resin, noise or saturated")
    return np.rint(np.clip(image, 0, 1) * 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------------------------
# Corpora on disk
# --------------------------------------------------------------------------------------------------------------
def _write_tif(path: Path, array: np.ndarray) -> Path:
    return write_image(path, array)


def make_corpus(outdir: str | os.PathLike, n_groups_2d: int = 3, images_per_group: int = 4, n_volumes: int = 2,
                image_shape: Sequence[int] = (512, 512), volume_shape: Sequence[int] = (24, 256, 256),
                seed: int = 0, uninformative: bool = True) -> dict:
    """Write a fake heterogeneous EM collection for the curation stage.

    Layout: ``outdir/images2d/{group}/{group}_NN.tif`` (one subfolder per fake 2D imaging project, each with its
    own look; the third group is stored as 16-bit with a narrow value range, like raw detector data) and
    ``outdir/volumes/*.nrrd`` with spacing: volume 0 is an anisotropic ssTEM-like stack, volume 1 an isotropic
    FIB-SEM-like one, volume 2 a stack named ``*_video`` (the curation rule slices those along z only), further
    ones cycle through the looks. With `uninformative`, group 0 also gets ``{group}_blank.tif`` (empty resin)
    and group 1 ``{group}_noise.tif`` (pure noise). Returns a manifest of the written paths.
    """
    out = Path(outdir)
    rng = np.random.default_rng(seed)
    manifest: dict = {"images2d": {}, "volumes": [], "uninformative": []}
    for g in range(n_groups_2d):
        look = LOOKS[g % len(LOOKS)]
        group = f"{look}_project{g}"
        paths = []
        for i in range(images_per_group):
            image, _ = make_image(image_shape, look, seed=int(rng.integers(2**31)))
            if g == 2:  # raw 16-bit detector data with a narrow range (to_uint8 must not turn it black)
                image = (1000 + image.astype(np.uint16) * 12).astype(np.uint16)
            paths.append(_write_tif(out / "images2d" / group / f"{group}_{i:02d}.tif", image))
        if uninformative and g < 2:
            kind = "resin" if g == 0 else "noise"
            blank = make_uninformative(image_shape, kind, seed=int(rng.integers(2**31)))
            name = "blank" if kind == "resin" else "noise"
            path = _write_tif(out / "images2d" / group / f"{group}_{name}.tif", blank)
            paths.append(path)
            manifest["uninformative"].append(path)
        manifest["images2d"][group] = paths

    specs = [("sstem", "sstem_aniso", (get_look("sstem").anisotropy, 1.0, 1.0)),
             ("fib_sem", "fibsem_iso", (1.0, 1.0, 1.0)),
             ("tem", "tem_video", (1.0, 1.0, 1.0))]
    for v in range(n_volumes):
        if v < len(specs):
            look, stem, spacing = specs[v]
        else:
            look = LOOKS[v % len(LOOKS)]
            stem, spacing = f"{look}_vol", (1.0, 1.0, 1.0)
        volume, _ = make_volume(volume_shape, look, seed=int(rng.integers(2**31)), spacing=spacing)
        # physical spacing in nm, as real files carry (5 nm pixels)
        path = write_volume(out / "volumes" / f"{stem}{v:02d}.nrrd", volume, tuple(5.0 * s for s in spacing))
        manifest["volumes"].append(path)
    return manifest


def make_benchmark(outdir: str | os.PathLike, n_train: int = 8, n_test: int = 3, shape: Sequence[int] = (256, 256),
                   target: str = "mito", seed: int = 0, volume_shape: Sequence[int] = (16, 128, 128),
                   n_valid: int = 2, n_test3d: int = 1, look: str = "tem") -> dict:
    """Write a small segmentation benchmark in the evaluation layout, masks uint8 0/1 for `target`:
    ``outdir/{train,valid,test2d}/{images,masks}/NAME.tif`` and ``outdir/test3d/{images,masks}/NAME.nrrd``.
    Returns a dict of the written image paths per split."""
    if target not in MASK_KEYS:
        raise ValueError(f"unknown target {target!r}; choose one of {', '.join(MASK_KEYS)}")
    out = Path(outdir)
    rng = np.random.default_rng(seed)
    written: dict[str, list[Path]] = {}
    for split, count in (("train", n_train), ("valid", n_valid), ("test2d", n_test)):
        written[split] = []
        for i in range(count):
            image, masks = make_image(shape, look, seed=int(rng.integers(2**31)))
            name = f"{split}_{i:03d}.tif"
            written[split].append(_write_tif(out / split / "images" / name, image))
            _write_tif(out / split / "masks" / name, masks[target].astype(np.uint8))
    written["test3d"] = []
    for i in range(n_test3d):
        volume, masks = make_volume(volume_shape, look, seed=int(rng.integers(2**31)))
        name = f"test3d_{i:03d}.nrrd"
        written["test3d"].append(write_volume(out / "test3d" / "images" / name, volume))
        write_volume(out / "test3d" / "masks" / name, masks[target].astype(np.uint8))
    return written
