"""One place that reads and writes every image format the stages meet.

Conventions
-----------
* 2D images are ``(y, x)`` arrays in their native dtype; colour is converted to gray (ITU-R BT.601 luma) and an
  alpha channel is dropped.
* Volumes are ``(z, y, x)`` arrays with a spacing ``(z, y, x)`` in the file's physical unit (1.0 where the file
  has none).
* HDF5 datasets are addressed as ``file.h5:/group/key`` and Zarr arrays as ``store.zarr/key`` (or
  ``store.zarr:/key``); both are read lazily, one slice at a time, so volumes larger than memory work. A Zarr
  group that holds OME-Zarr ``multiscales`` metadata is read at its full-resolution level with its scale as spacing.
* Every failure raises :class:`cellemnet.errors.InputError` whose one-line message names the file and says what
  is wrong; library exceptions are wrapped, never shown as tracebacks by the command-line scripts.

Heavy libraries (SimpleITK, OpenCV, tifffile, h5py, zarr, mrcfile) are imported inside the functions that use
them so that ``import cellemnet.io`` stays fast; torch only inside the two functions that read and write torch files.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from cellemnet.errors import InputError


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()

PathLike = str | os.PathLike

IMAGE_SUFFIXES: tuple[str, ...] = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")
SITK_SUFFIXES: tuple[str, ...] = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")
MRC_SUFFIXES: tuple[str, ...] = (".mrc", ".rec", ".map", ".st", ".ali")
HDF5_SUFFIXES: tuple[str, ...] = (".h5", ".hdf5", ".hdf", ".he5")
ZARR_SUFFIXES: tuple[str, ...] = (".zarr",)
VIDEO_SUFFIXES: tuple[str, ...] = (".mp4", ".avi")
TIFF_SUFFIXES: tuple[str, ...] = (".tif", ".tiff")
VOLUME_SUFFIXES: tuple[str, ...] = (
    SITK_SUFFIXES + TIFF_SUFFIXES + MRC_SUFFIXES + HDF5_SUFFIXES + ZARR_SUFFIXES + VIDEO_SUFFIXES
)

# Robust intensity rule used by to_uint8 (see intensity_limits).
LOW_PERCENTILE = 0.1
HIGH_PERCENTILE = 99.9
MAX_LIMIT_SAMPLES = 2_000_000

# IMOD marks mode-0 MRC files whose bytes are unsigned with this stamp and bit 0 of imodFlags cleared.
_IMOD_STAMP = 1146047817
_IMOD_STAMP_OFFSET = 40  # inside the header's `extra2` field (file bytes 152..155)
_IMOD_FLAGS_OFFSET = 44  # file bytes 156..159


# --------------------------------------------------------------------------------------------------------------
# Atomic writes
# --------------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed onto `path`, on failure removed.

    A crash therefore never leaves a file at `path` that looks complete. The temporary name keeps the
    suffix so that format-sniffing writers (SimpleITK, tifffile) still work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = suffix if suffix is not None else "".join(path.suffixes) or ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".part{suffix}", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; outputs get the usual permissions
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def check_writable(folder: str | os.PathLike, what: str = "output folder") -> Path:
    """Create `folder` if needed and prove a file can be written there (a real write: permission bits do not stop
    root, a read-only mount does); InputError naming the folder otherwise. Commands call this before their
    expensive work, so a run never computes for hours and then fails to save."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(prefix=".cellemnet-write-check-", dir=folder):
            pass
    except OSError as exc:
        reason = exc.strerror or exc.__class__.__name__
        raise InputError(f"{folder}: cannot write the {what} here ({reason}); choose another folder") from None
    return folder


def rescue_path(path: str | os.PathLike) -> Path:
    """Where a result goes when its own folder refused the write late: the temp folder, with a clear name."""
    return Path(tempfile.gettempdir()) / "cellemnet-rescued" / f"{os.getpid()}-{Path(path).name}"


def write_or_rescue(path: str | os.PathLike, data: bytes, what: str = "result") -> Path:
    """Write `data` atomically to `path`; when the folder refuses (full disk, lost permission) the result is not
    lost: it goes to rescue_path(path) and a warning says where. Returns the path written; InputError naming both
    when even the rescue fails."""
    import sys

    try:
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
        return Path(path)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        rescue = rescue_path(path)
        try:
            rescue.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(rescue) as tmp:
                tmp.write_bytes(data)
        except OSError as again:
            raise InputError(f"{path}: cannot write the {what} ({reason}); the rescue copy {rescue} failed too "
                             f"({again.strerror or again})") from None
        print(f"WARNING: could not write {path} ({reason}); the {what} was saved to {rescue} instead: move it "
              "where you want it", file=sys.stderr, flush=True)
        return rescue


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write text to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write bytes to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Like atomic_path for a folder (a Zarr store, a model package): build it beside `path`, then swap it in."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp makes 0700 folders; outputs get the usual permissions
    try:
        yield tmp
        swap_in(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def swap_in(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Replace `path` (a folder, a file, or nothing) by `tmp` with renames only, so readers see the old or the new
    one whole; the old one is deleted afterwards."""
    tmp, path = Path(tmp), Path(path)
    if not path.exists():
        os.replace(tmp, path)
        return
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()


# --------------------------------------------------------------------------------------------------------------
# Paths and suffixes
# --------------------------------------------------------------------------------------------------------------
# tifffile logs recoverable damage ("invalid page offset") on its own logger, without the file's name; the readers
# here report what went wrong with the file named, so its log lines are only noise.
logging.getLogger("tifffile").setLevel(logging.CRITICAL)

_ITK_ERROR = re.compile(r"itk::ERROR: \w+\(0x[0-9a-f]+\): (.*)$")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    itk = _ITK_ERROR.search(text)  # SimpleITK: keep ITK's reason, not the C++ source locations before it
    if itk:
        text = itk.group(1)
    elif "Exception thrown in SimpleITK" in text and (".hxx:" in text or ".cxx:" in text):
        text = text.rsplit(": ", 1)[-1]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def file_suffix(path: PathLike) -> str:
    """Lower-case suffix of a file name, treating ``.nii.gz`` as one suffix."""
    name = Path(str(path)).name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return Path(name).suffix


_H5_RE = re.compile(r"^(?P<file>.*?\.(?:h5|hdf5|hdf|he5))(?::(?P<key>.*))?$", re.IGNORECASE)
_ZARR_RE = re.compile(r"^(?P<file>.*?\.zarr)(?:(?::|/)(?P<key>.*))?$", re.IGNORECASE)


def split_container_path(path: PathLike) -> tuple[Path, str | None, str | None]:
    """Split ``file.h5:/key`` or ``store.zarr/key`` into (file, key, kind); kind is "h5", "zarr" or None.

    For ordinary files the key and kind are None. An empty key is returned as None.
    """
    text = os.fspath(path)
    for kind, pattern in (("h5", _H5_RE), ("zarr", _ZARR_RE)):
        match = pattern.match(text)
        if match:
            key = (match.group("key") or "").strip("/") or None
            return Path(match.group("file")), key, kind
    return Path(text), None, None


def is_image_file(path: PathLike) -> bool:
    """True for a file whose suffix read_image understands (tif/tiff/png/jpg/jpeg/bmp)."""
    return file_suffix(path) in IMAGE_SUFFIXES


def is_volume_file(path: PathLike) -> bool:
    """True for a path read_volume understands by its suffix (tif counts as both an image and a volume).

    HDF5 (``file.h5:/key``) and Zarr (``store.zarr/key``) addresses count as volumes.
    """
    _, _, kind = split_container_path(path)
    if kind is not None:
        return True
    return file_suffix(path) in VOLUME_SUFFIXES


def _require_exists(path: Path) -> None:
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if path.is_dir() and file_suffix(path) not in ZARR_SUFFIXES:
        raise InputError(f"{path}: is a directory, not an image file")


# --------------------------------------------------------------------------------------------------------------
# Colour handling
# --------------------------------------------------------------------------------------------------------------
_LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601 weights for R, G, B


def _to_gray(array: np.ndarray, bgr: bool = False) -> np.ndarray:
    """(y, x, c) -> (y, x) in the same dtype: alpha dropped, equal channels kept exactly, else BT.601 luma."""
    if array.ndim != 3:
        return array
    channels = array.shape[2]
    if channels in (2, 4):  # gray+alpha or colour+alpha: drop alpha
        array = array[..., : channels - 1]
        channels -= 1
    if channels == 1:
        return np.ascontiguousarray(array[..., 0])
    if channels != 3:
        raise ValueError(f"{array.shape[2]} channels (expected 1-4)")
    first = array[..., 0]
    if np.array_equal(first, array[..., 1]) and np.array_equal(first, array[..., 2]):
        return np.ascontiguousarray(first)
    rgb = array[..., ::-1] if bgr else array
    gray = rgb.astype(np.float64) @ _LUMA
    if np.issubdtype(array.dtype, np.integer):
        info = np.iinfo(array.dtype)
        gray = np.clip(np.rint(gray), info.min, info.max)
    return gray.astype(array.dtype)


# --------------------------------------------------------------------------------------------------------------
# 2D images
# --------------------------------------------------------------------------------------------------------------
def read_image(path: PathLike) -> np.ndarray:
    """Read a 2D image (tif/tiff, png, jpg, bmp) as a (y, x) array in its native dtype.

    Colour becomes gray, alpha is dropped; 16-bit PNG/TIFF stay 16-bit, float TIFF stays float.
    A multi-page TIFF raises InputError (use read_volume).
    """
    path = Path(path)
    _require_exists(path)
    suffix = file_suffix(path)
    if suffix not in IMAGE_SUFFIXES:
        raise InputError(f"{path}: unsupported image type '{suffix}' (expected one of {', '.join(IMAGE_SUFFIXES)})")
    try:
        if suffix in TIFF_SUFFIXES:
            array = _read_tiff_2d(path)
        else:
            array = _read_cv2_image(path)
        array = _to_gray(array, bgr=suffix not in TIFF_SUFFIXES)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - any library failure becomes one line naming the file
        raise InputError(f"{path}: cannot read image ({_one_line(exc)})") from exc
    if array.ndim != 2:
        raise InputError(f"{path}: expected a 2D image, got shape {array.shape}")
    if array.size == 0:
        raise InputError(f"{path}: image is empty (shape {array.shape})")
    return array


def _read_tiff_2d(path: Path) -> np.ndarray:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        _check_claimed_size(path, series.shape, series.dtype, os.path.getsize(path))
        array, axes = series.asarray(), series.axes
    array, axes = _drop_singleton_axes(array, axes)
    if array.ndim == 3 and axes[0] in "CS" and array.shape[0] <= 4:
        array, axes = np.moveaxis(array, 0, -1), axes[1:] + "S"  # planar RGB(A) -> contiguous
    if array.ndim == 3 and axes[-1] == "S" and array.shape[-1] <= 4:
        return array
    if array.ndim != 2:
        raise InputError(f"{path}: is a stack of shape {array.shape} (axes {axes}), not a 2D image "
                         f"(read it with read_volume)")
    return array


def _check_claimed_size(path: Path, shape: Sequence[int], dtype, file_bytes: int) -> None:
    """Refuse, before allocating, an image whose header claims more memory than the machine has (a damaged or
    hostile header: a 138-byte TIFF can claim 40 GB)."""
    claimed = int(np.prod([int(n) for n in shape], dtype=np.float64) * np.dtype(dtype).itemsize)
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return
    if claimed > memory:
        raise InputError(f"{path}: its header claims {'x'.join(map(str, shape))} pixels ({claimed / 2**30:.1f} GiB, "
                         f"more than this machine's {memory / 2**30:.0f} GiB of memory) in a file of "
                         f"{file_bytes} bytes: damaged, or read it as a volume in blocks")


def _drop_singleton_axes(array: np.ndarray, axes: str) -> tuple[np.ndarray, str]:
    keep = [i for i, n in enumerate(array.shape) if n != 1 or axes[i] in "YX"]
    return array.reshape([array.shape[i] for i in keep]), "".join(axes[i] for i in keep)


def _read_cv2_image(path: Path) -> np.ndarray:
    import cv2

    data = np.fromfile(path, dtype=np.uint8)
    if data.size == 0:
        raise InputError(f"{path}: file is empty")
    array = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if array is None:
        raise InputError(f"{path}: not a readable {file_suffix(path)} image (corrupt or wrong format)")
    return array


def write_image(path: PathLike, array: np.ndarray) -> Path:
    """Write a 2D array atomically: .tif/.tiff keep any dtype; .png takes uint8/uint16 (bool becomes 0/255);
    .jpg/.bmp take uint8. Returns the path."""
    path = Path(path)
    array = np.asarray(array)
    if array.ndim != 2:
        raise InputError(f"{path}: write_image needs a 2D array, got shape {array.shape}")
    suffix = file_suffix(path)
    if array.dtype == bool:
        array = array.astype(np.uint8) * (1 if suffix in TIFF_SUFFIXES else 255)
    try:
        if suffix in TIFF_SUFFIXES:
            import tifffile

            with atomic_path(path) as tmp:
                tifffile.imwrite(tmp, array)
        elif suffix in (".png", ".jpg", ".jpeg", ".bmp"):
            allowed = (np.uint8, np.uint16) if suffix == ".png" else (np.uint8,)
            if array.dtype not in allowed:
                raise InputError(
                    f"{path}: {suffix} cannot hold {array.dtype} data "
                    f"(use .tif, or convert with cellemnet.io.to_uint8 first)"
                )
            import cv2

            ok, encoded = cv2.imencode(suffix, np.ascontiguousarray(array))
            if not ok:
                raise InputError(f"{path}: OpenCV could not encode the image")
            atomic_write_bytes(path, encoded.tobytes())
        else:
            raise InputError(f"{path}: unsupported image type '{suffix}' (use .tif or .png)")
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"{path}: cannot write image ({_one_line(exc)})") from exc
    return path


# --------------------------------------------------------------------------------------------------------------
# Volumes: readers
# --------------------------------------------------------------------------------------------------------------
Spacing = tuple[float, float, float]


class VolumeReader:
    """A (z, y, x) volume opened for reading, possibly lazily (HDF5, Zarr, memory-mapped MRC).

    Attributes: ``shape``, ``dtype``, ``ndim``, ``spacing`` (z, y, x), ``path`` (as given), ``lazy``.
    ``reader[idx]`` returns a numpy array; ``slices(axis)`` streams 2D slices one at a time.
    Use as a context manager or call ``close()``.
    """

    def __init__(self, path: PathLike, array: Any, spacing: Sequence[float], closer: Any = None,
                 lazy: bool = False):
        self.path = os.fspath(path)
        self._array = array
        self.spacing: Spacing = tuple(float(s) for s in spacing)  # type: ignore[assignment]
        self._closer = closer
        self.lazy = lazy

    @property
    def array(self) -> Any:
        """The underlying array-like (numpy array, h5py Dataset or zarr Array)."""
        return self._array

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self._array.shape)  # type: ignore[return-value]

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self._array.dtype)

    @property
    def ndim(self) -> int:
        return 3

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        try:
            return np.asarray(self._array[key])
        except (IndexError, TypeError, ValueError):
            raise
        except Exception as exc:  # noqa: BLE001 - e.g. a truncated chunk on disk
            raise InputError(f"{self.path}: cannot read {key!r} ({_one_line(exc)})") from exc

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        data = self[...]
        return data.astype(dtype) if dtype is not None else data

    def num_slices(self, axis: int = 0) -> int:
        return self.shape[axis]

    def slice(self, axis: int, index: int) -> np.ndarray:
        """One 2D slice perpendicular to `axis` (0: yx plane, 1: zx plane, 2: zy plane)."""
        key: list[Any] = [slice(None)] * 3
        key[axis] = int(index)
        return self[tuple(key)]

    def slices(self, axis: int = 0, step: int = 1) -> Iterator[np.ndarray]:
        """Yield the 2D slices along `axis`, reading one at a time."""
        if axis not in (0, 1, 2):
            raise ValueError(f"axis must be 0, 1 or 2, got {axis}")
        for index in range(0, self.shape[axis], max(1, int(step))):
            yield self.slice(axis, index)

    def read(self) -> np.ndarray:
        """The whole volume as a numpy array."""
        return self[...]

    def close(self) -> None:
        if self._closer is not None:
            with contextlib.suppress(Exception):
                self._closer.close()
            self._closer = None

    def __enter__(self) -> "VolumeReader":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"VolumeReader({self.path!r}, shape={self.shape}, dtype={self.dtype}, spacing={self.spacing}, "
                f"lazy={self.lazy})")


def open_volume(path: PathLike) -> VolumeReader:
    """Open a volume for reading; HDF5, Zarr and MRC are lazy (a slice is read only when asked for).

    Supported: nrrd/nhdr, nii/nii.gz, mha/mhd (SimpleITK), tif/tiff stacks, mrc/rec/map, ``file.h5:/key``,
    ``store.zarr[/key]`` (incl. OME-Zarr multiscales), mp4/avi videos (as (t, y, x) uint8), and 2D images
    (as a single-slice volume).
    """
    file, key, kind = split_container_path(path)
    if kind == "h5":
        return _open_h5(file, key, os.fspath(path))
    if kind == "zarr":
        return _open_zarr(file, key, os.fspath(path))
    _require_exists(file)
    suffix = file_suffix(file)
    try:
        if suffix in MRC_SUFFIXES:
            return _open_mrc(file)
        if suffix in TIFF_SUFFIXES:
            mapped = _memmap_tiff_volume(file)
            if mapped is not None:
                return mapped
            array, spacing = _read_tiff_volume(file)
        elif suffix in SITK_SUFFIXES:
            array, spacing = _read_sitk_volume(file)
        elif suffix in VIDEO_SUFFIXES:
            array, spacing = read_video(file), (1.0, 1.0, 1.0)
        elif suffix in IMAGE_SUFFIXES:
            array, spacing = read_image(file)[None], (1.0, 1.0, 1.0)
        else:
            array, spacing = _read_other_sitk_volume(file, suffix)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"{file}: cannot read volume ({_one_line(exc)})") from exc
    return VolumeReader(file, _as_3d(array, file), spacing)


def read_volume(path: PathLike) -> tuple[Any, Spacing]:
    """Read a volume: (array in (z, y, x) order, spacing (z, y, x)).

    For HDF5 and Zarr the array is the lazy h5py Dataset / zarr Array (slice it to read); the HDF5 file stays
    open as long as the Dataset is referenced. For every other format it is a numpy array (MRC: a copy; SimpleITK
    formats: a read-only view of the image buffer, so no second copy of a big volume; `np.array(a)` for a writable one).
    """
    reader = open_volume(path)
    _, _, kind = split_container_path(path)
    if kind is not None:
        return reader.array, reader.spacing
    data = np.array(reader.array) if reader.lazy else reader.array
    reader.close()
    return data, reader.spacing


def _as_3d(array: np.ndarray, path: PathLike) -> np.ndarray:
    if array.ndim == 2:
        return array[None]
    if array.ndim > 3:
        squeezed = np.squeeze(array)
        if squeezed.ndim == 3:
            return squeezed
        raise InputError(f"{path}: expected a 3D volume, got shape {array.shape}")
    if array.ndim != 3:
        raise InputError(f"{path}: expected a 3D volume, got shape {array.shape}")
    if array.size == 0:
        raise InputError(f"{path}: volume is empty (shape {array.shape})")
    return array


def _read_sitk_volume(path: Path) -> tuple[np.ndarray, Spacing]:
    import SimpleITK as sitk

    image = _sitk_read_keeping_locale(sitk, path)
    if image.GetNumberOfComponentsPerPixel() > 1:
        array = sitk.GetArrayFromImage(image)
        array = np.stack([_to_gray(a) for a in array]) if array.ndim == 4 else _to_gray(array)
    else:
        array = _array_view_of(image)
    spacing = tuple(float(s) for s in reversed(image.GetSpacing()))
    if array.ndim == 2:
        spacing = (1.0,) + spacing[-2:]
    return array, _pad_spacing(spacing)


def _sitk_read_keeping_locale(sitk, path: Path):
    """sitk.ReadImage, restoring the process locale afterwards: ITK's VTK reader switches it to "C", after which
    Python decodes subprocess output as ASCII."""
    import locale

    saved = locale.setlocale(locale.LC_ALL)
    try:
        return sitk.ReadImage(str(path))
    finally:
        locale.setlocale(locale.LC_ALL, saved)


class _SitkBuffer:
    """Exposes a SimpleITK image's pixel buffer to numpy and keeps the image alive for as long as numpy needs it.

    GetArrayFromImage copies the whole volume (two copies in memory at the peak). GetArrayViewFromImage does not,
    but its view does not keep the image alive. numpy collapses chains of ndarray views to the owner of the memory,
    so the image must hang on a non-ndarray base object, which is this one.
    """

    def __init__(self, image):
        import SimpleITK as sitk

        self._image = image
        view = sitk.GetArrayViewFromImage(image)
        self.__array_interface__ = dict(view.__array_interface__)


def _array_view_of(image) -> np.ndarray:
    array = np.asarray(_SitkBuffer(image))
    array.flags.writeable = False
    return array


def _read_other_sitk_volume(path: Path, suffix: str) -> tuple[np.ndarray, Spacing]:
    """Last resort for suffixes not listed (vtk, gipl, Analyze, ...): whatever SimpleITK can read."""
    try:
        return _read_sitk_volume(path)
    except Exception as exc:  # noqa: BLE001 - not an image SimpleITK knows either
        raise InputError(
            f"{path}: unsupported volume type '{suffix}' (expected one of {', '.join(VOLUME_SUFFIXES)}, "
            f"file.h5:/key, store.zarr/key, or another format SimpleITK reads)"
        ) from exc


def _pad_spacing(spacing: Sequence[float]) -> Spacing:
    spacing = tuple(float(s) for s in spacing)[-3:]
    return (1.0,) * (3 - len(spacing)) + spacing  # type: ignore[return-value]


def _memmap_tiff_volume(path: Path) -> VolumeReader | None:
    """An uncompressed, contiguous gray TIFF stack memory-mapped (lazy); None when it cannot be mapped."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        if series.axes.endswith("S") or series.dtype is None:
            return None
        spacing = _tiff_spacing(tif)
    try:
        mapped = tifffile.memmap(path, mode="r")
    except (ValueError, TypeError, OSError):  # compressed, tiled or scattered pages
        return None
    while mapped.ndim > 3 and mapped.shape[0] == 1:
        mapped = mapped[0]
    if mapped.ndim != 3 or mapped.size == 0:
        return None
    return VolumeReader(path, mapped, spacing, lazy=True)


def _read_tiff_volume(path: Path) -> tuple[np.ndarray, Spacing]:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        array, axes = series.asarray(), series.axes
        spacing = _tiff_spacing(tif)
    array, axes = _drop_singleton_axes(array, axes)
    if axes.endswith("S") and array.shape[-1] <= 4:  # colour samples per pixel
        array = np.stack([_to_gray(a) for a in array]) if array.ndim == 4 else _to_gray(array)
    return array, spacing


def _tiff_spacing(tif: Any) -> Spacing:
    """Spacing from our JSON description, else ImageJ's z spacing + resolution tags, else 1."""
    meta = tif.shaped_metadata[0] if tif.shaped_metadata else None
    if meta and "spacing" in meta and len(meta["spacing"]) >= 1:
        return _pad_spacing(meta["spacing"])
    z = 1.0
    if tif.imagej_metadata and "spacing" in tif.imagej_metadata:
        z = float(tif.imagej_metadata["spacing"])
        page = tif.pages[0]
        try:
            xres = page.tags["XResolution"].value
            yres = page.tags["YResolution"].value
            return (z, yres[1] / yres[0], xres[1] / xres[0])
        except (KeyError, ZeroDivisionError, TypeError):
            return (z, 1.0, 1.0)
    return (1.0, 1.0, 1.0)


def _open_mrc(path: Path) -> VolumeReader:
    import mrcfile

    try:
        mrc = mrcfile.mmap(str(path), mode="r", permissive=True)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"{path}: cannot read MRC ({_one_line(exc)})") from exc
    if mrc.data is None:
        mrc.close()
        raise InputError(f"{path}: MRC file holds no data (corrupt header or truncated)")
    data = mrc.data
    if int(mrc.header.mode) == 0 and _mrc_bytes_unsigned(mrc.header):
        data = data.view(np.uint8)
    voxel = mrc.voxel_size
    spacing = tuple(float(v) if float(v) > 0 else 1.0 for v in (voxel.z, voxel.y, voxel.x))
    return VolumeReader(path, _as_3d(data, path), spacing, closer=mrc, lazy=True)


def _mrc_bytes_unsigned(header: Any) -> bool:
    extra = bytes(header.extra2)
    order = "big" if header.mode.dtype.byteorder == ">" else "little"
    stamp = int.from_bytes(extra[_IMOD_STAMP_OFFSET:_IMOD_STAMP_OFFSET + 4], order, signed=True)
    flags = int.from_bytes(extra[_IMOD_FLAGS_OFFSET:_IMOD_FLAGS_OFFSET + 4], order, signed=True)
    return stamp == _IMOD_STAMP and not (flags & 1)


def _spacing_from_attrs(attrs: Any, ndim: int) -> Spacing:
    """Spacing stored as an attribute by common tools: ours ("spacing"), CREMI ("resolution"), ilastik
    ("element_size_um")."""
    for name in ("spacing", "resolution", "element_size_um"):
        if name in attrs:
            values = np.atleast_1d(np.asarray(attrs[name], dtype=float))
            if values.size >= 1 and np.all(values > 0):
                return _pad_spacing(values[-ndim:] if ndim <= 3 else values[-3:])
    return (1.0, 1.0, 1.0)


def _open_h5(file: Path, key: str | None, address: str) -> VolumeReader:
    import h5py

    if not file.exists():
        raise InputError(f"{file}: file not found")
    try:
        h5 = h5py.File(file, "r")
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"{file}: cannot open as HDF5 ({_one_line(exc)})") from exc
    try:
        if key is None:
            names: list[str] = []
            h5.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
            if len(names) != 1:
                found = ", ".join(names[:10]) or "none"
                raise InputError(f"{file}: give the dataset as {file}:/KEY (datasets found: {found})")
            key = names[0]
        if key not in h5:
            raise InputError(f"{file}: no dataset '{key}' (top-level keys: {', '.join(list(h5.keys())[:10])})")
        dataset = h5[key]
        if not isinstance(dataset, h5py.Dataset):
            raise InputError(f"{file}: '{key}' is a group, not a dataset")
        spacing = _spacing_from_attrs(dataset.attrs, dataset.ndim)
        dataset = _squeeze_lazy(dataset, address)
    except BaseException:
        h5.close()
        raise
    return VolumeReader(address, dataset, spacing, closer=h5, lazy=True)


def _squeeze_lazy(array: Any, address: str) -> Any:
    if array.ndim == 3:
        if 0 in array.shape:
            raise InputError(f"{address}: volume is empty (shape {tuple(array.shape)})")
        return array
    if array.ndim == 2:
        return _LazyAddAxis(array)
    raise InputError(f"{address}: expected a 3D dataset, got shape {tuple(array.shape)}")


class _LazyAddAxis:
    """A 2D lazy array seen as (1, y, x) without reading it."""

    def __init__(self, array: Any):
        self._array = array
        self.shape = (1, *array.shape)
        self.dtype = array.dtype
        self.ndim = 3
        self.attrs = getattr(array, "attrs", {})

    def __getitem__(self, key: Any) -> np.ndarray:
        return np.asarray(self._array[...])[None][key]


def _open_zarr(store: Path, key: str | None, address: str) -> VolumeReader:
    import zarr

    if not store.exists():
        raise InputError(f"{store}: file not found")
    try:
        node = zarr.open(str(store), mode="r", path=key) if key else zarr.open(str(store), mode="r")
    except Exception as exc:  # noqa: BLE001
        what = f"key '{key}'" if key else "store"
        raise InputError(f"{store}: cannot open Zarr {what} ({_one_line(exc)})") from exc
    spacing: Spacing | None = None
    if isinstance(node, zarr.Group):
        node, spacing = _ome_zarr_level0(node, store, key)
    if spacing is None:
        spacing = _spacing_from_attrs(node.attrs, node.ndim)
    array = _squeeze_lazy(node, address)
    return VolumeReader(address, array, spacing, lazy=True)


def _ome_zarr_level0(group: Any, store: Path, key: str | None) -> tuple[Any, Spacing]:
    """Full-resolution array of an OME-Zarr multiscale group (v0.4 or v0.5) and its spatial scale as spacing."""
    attrs = dict(group.attrs)
    multiscales = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
    where = f"{store}" + (f"/{key}" if key else "")
    if not multiscales:
        arrays = [name for name, _ in group.arrays()]
        raise InputError(f"{where}: is a Zarr group without OME multiscales; give an array key "
                         f"(arrays: {', '.join(arrays[:10]) or 'none'})")
    level = multiscales[0]["datasets"][0]
    array = group[level["path"]]
    scale = [1.0] * array.ndim
    for transform in level.get("coordinateTransformations", []):
        if transform.get("type") == "scale":
            scale = [float(s) for s in transform["scale"]]
    axes = multiscales[0].get("axes")
    if axes and all(isinstance(a, dict) for a in axes):
        spatial = [i for i, a in enumerate(axes) if a.get("type") == "space"]
    else:
        spatial = list(range(max(0, array.ndim - 3), array.ndim))
    spacing = _pad_spacing([scale[i] for i in spatial[-3:]]) if spatial else (1.0, 1.0, 1.0)
    if array.ndim > 3:
        extra = [i for i in range(array.ndim) if i not in spatial[-3:]]
        if any(array.shape[i] != 1 for i in extra):
            raise InputError(f"{where}: OME-Zarr image has non-spatial axes of shape "
                             f"{tuple(array.shape[i] for i in extra)}; only one channel/time point is supported")
        array = _LazySqueeze(array, extra)
    return array, spacing


class _LazySqueeze:
    """View of a lazy N-D array with its singleton non-spatial axes (OME-Zarr t, c) removed."""

    def __init__(self, array: Any, drop: list[int]):
        self._array = array
        self._drop = drop
        self.shape = tuple(s for i, s in enumerate(array.shape) if i not in drop)
        self.dtype = array.dtype
        self.ndim = len(self.shape)
        self.attrs = getattr(array, "attrs", {})

    def __getitem__(self, key: Any) -> np.ndarray:
        if not isinstance(key, tuple):
            key = (key,)
        if any(k is Ellipsis for k in key):
            pos = key.index(Ellipsis)
            key = key[:pos] + (slice(None),) * (self.ndim - len(key) + 1) + key[pos + 1:]
        key = key + (slice(None),) * (self.ndim - len(key))
        full: list[Any] = []
        it = iter(key)
        for i in range(self._array.ndim):
            full.append(0 if i in self._drop else next(it))
        return np.asarray(self._array[tuple(full)])


# --------------------------------------------------------------------------------------------------------------
# Videos
# --------------------------------------------------------------------------------------------------------------
def read_video(path: PathLike) -> np.ndarray:
    """Read every frame of an .mp4/.avi video as a (t, y, x) uint8 stack (colour becomes gray)."""
    import cv2

    path = Path(path)
    _require_exists(path)
    capture = cv2.VideoCapture(str(path))
    frames: list[np.ndarray] = []
    try:
        if not capture.isOpened():
            raise InputError(f"{path}: cannot open as a video (corrupt or unsupported codec)")
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            frames.append(_to_gray(frame, bgr=True) if frame.ndim == 3 else frame)
    finally:
        capture.release()
    if not frames:
        raise InputError(f"{path}: video has no readable frames")
    return np.stack(frames).astype(np.uint8, copy=False)


def write_video(path: PathLike, stack: np.ndarray, fps: float = 10.0) -> Path:
    """Write a (t, y, x) uint8 stack as a lossy .avi (MJPG) or .mp4 (mp4v) video; mainly for tests and demos."""
    import cv2

    path = Path(path)
    stack = np.asarray(stack)
    if stack.ndim != 3 or stack.dtype != np.uint8:
        raise InputError(f"{path}: write_video needs a (t, y, x) uint8 stack, got {stack.dtype} {stack.shape}")
    codecs = {".avi": "MJPG", ".mp4": "mp4v"}
    suffix = file_suffix(path)
    if suffix not in codecs:
        raise InputError(f"{path}: unsupported video type '{suffix}' (use .avi or .mp4)")
    with atomic_path(path) as tmp:
        writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*codecs[suffix]), float(fps),
                                 (stack.shape[2], stack.shape[1]), True)
        if not writer.isOpened():
            raise InputError(f"{path}: OpenCV cannot write {suffix} video here")
        try:
            for frame in stack:
                writer.write(cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR))
        finally:
            writer.release()
    return path


# --------------------------------------------------------------------------------------------------------------
# Volumes: writers
# --------------------------------------------------------------------------------------------------------------
def write_volume(path: PathLike, array: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0),
                 compress: bool = False) -> Path:
    """Write a (z, y, x) array with its spacing (z, y, x), atomically.

    Formats by suffix: .nrrd, .nii/.nii.gz, .mha (SimpleITK); .tif/.tiff (tifffile, spacing in the JSON
    description); .mrc/.rec (mrcfile, voxel size; uint8 kept as unsigned bytes with IMOD's flag);
    ``out.h5[:/key]`` (h5py, chunked per slice, ``spacing`` attribute; default key "raw");
    ``out.zarr[/key]`` (zarr, chunked per slice, ``spacing`` attribute). Returns the file path.
    """
    file, key, kind = split_container_path(path)
    array = np.asarray(array)
    if array.ndim != 3:
        raise InputError(f"{file}: write_volume needs a 3D (z, y, x) array, got shape {array.shape}")
    if array.size == 0:
        raise InputError(f"{file}: write_volume got an empty array (shape {array.shape})")
    if array.dtype == bool:
        array = array.astype(np.uint8)
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != 3 or not all(np.isfinite(spacing)) or min(spacing) <= 0:
        raise InputError(f"{file}: spacing must be three positive numbers (z, y, x), got {spacing}")
    suffix = file_suffix(file)
    try:
        if kind == "h5":
            _write_h5(file, key or "raw", array, spacing, compress)
        elif kind == "zarr":
            _write_zarr(file, key, array, spacing)
        elif suffix in (".nrrd", ".nii", ".nii.gz", ".mha"):
            import SimpleITK as sitk

            image = sitk.GetImageFromArray(array)
            image.SetSpacing(tuple(reversed(spacing)))
            with atomic_path(file) as tmp:
                sitk.WriteImage(image, str(tmp), useCompression=compress or suffix == ".nii.gz")
        elif suffix in TIFF_SUFFIXES:
            import tifffile

            with atomic_path(file) as tmp:
                tifffile.imwrite(tmp, array, metadata={"spacing": list(spacing)},
                                 compression="zlib" if compress else None)
        elif suffix in MRC_SUFFIXES:
            _write_mrc(file, array, spacing)
        else:
            raise InputError(f"{file}: cannot write volumes as '{suffix}' "
                             f"(use .nrrd, .nii.gz, .mha, .tif, .mrc, .h5 or .zarr)")
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"{file}: cannot write volume ({_one_line(exc)})") from exc
    return file


def _slice_chunks(shape: Sequence[int]) -> tuple[int, int, int]:
    return (1, min(int(shape[1]), 1024), min(int(shape[2]), 1024))


def _write_h5(file: Path, key: str, array: np.ndarray, spacing: Spacing, compress: bool) -> None:
    import h5py

    with atomic_path(file) as tmp:
        with h5py.File(tmp, "w") as h5:
            dataset = h5.create_dataset(key, data=array, chunks=_slice_chunks(array.shape),
                                        compression="gzip" if compress else None)
            dataset.attrs["spacing"] = np.asarray(spacing, dtype=float)


def _write_zarr(store: Path, key: str | None, array: np.ndarray, spacing: Spacing) -> None:
    import zarr

    def create(root: Path, name: str | None) -> None:
        if name:
            group = zarr.open_group(str(root), mode="a")
            target = group.create_array(name, shape=array.shape, dtype=array.dtype,
                                        chunks=_slice_chunks(array.shape), overwrite=True)
        else:
            target = zarr.create_array(str(root), shape=array.shape, dtype=array.dtype,
                                       chunks=_slice_chunks(array.shape), overwrite=True)
        target[...] = array
        target.attrs["spacing"] = list(spacing)

    if key:  # adds/replaces one array inside a (possibly existing) store
        create(store, key)
    else:
        with atomic_dir(store) as tmp:
            create(tmp, None)


def write_ome_zarr(path: PathLike, array: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0),
                   unit: str = "nanometer") -> Path:
    """Write a (z, y, x) array as a single-level OME-Zarr 0.4 image (zarr v2 group with `multiscales`)."""
    import zarr

    store = Path(path)
    array = np.asarray(array)
    if array.ndim != 3:
        raise InputError(f"{store}: write_ome_zarr needs a 3D (z, y, x) array, got shape {array.shape}")
    spacing = [float(s) for s in spacing]
    with atomic_dir(store) as tmp:
        group = zarr.open_group(str(tmp), mode="w", zarr_format=2)
        level = group.create_array("0", shape=array.shape, dtype=array.dtype, chunks=_slice_chunks(array.shape))
        level[...] = array
        group.attrs["multiscales"] = [{
            "version": "0.4",
            "name": store.stem,
            "axes": [{"name": n, "type": "space", "unit": unit} for n in ("z", "y", "x")],
            "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": spacing}]}],
        }]
    return store


def _write_mrc(file: Path, array: np.ndarray, spacing: Spacing) -> None:
    import mrcfile

    unsigned_bytes = array.dtype == np.uint8
    data = array.view(np.int8) if unsigned_bytes else array
    if data.dtype == np.float64:
        data = data.astype(np.float32)
    with atomic_path(file) as tmp:
        with mrcfile.new(str(tmp), overwrite=True) as mrc:
            mrc.set_data(np.ascontiguousarray(data))
            mrc.voxel_size = (spacing[2], spacing[1], spacing[0])
            if unsigned_bytes:
                _mark_mrc_unsigned(mrc.header)
            mrc.update_header_stats()


def _mark_mrc_unsigned(header: Any) -> None:
    extra = bytearray(bytes(header.extra2))
    order = "big" if header.mode.dtype.byteorder == ">" else "little"
    extra[_IMOD_STAMP_OFFSET:_IMOD_STAMP_OFFSET + 4] = _IMOD_STAMP.to_bytes(4, order, signed=True)
    extra[_IMOD_FLAGS_OFFSET:_IMOD_FLAGS_OFFSET + 4] = (0).to_bytes(4, order, signed=True)
    header.extra2 = bytes(extra)


# --------------------------------------------------------------------------------------------------------------
# Intensity conversion
# --------------------------------------------------------------------------------------------------------------
def _check_array(array: Any, what: str, ndims: tuple[int, ...] = (2, 3)) -> None:
    shape = tuple(array.shape)
    if len(shape) not in ndims:
        raise InputError(f"{what}: expected a {' or '.join(f'{n}D' for n in ndims)} array, got shape {shape}")
    if 0 in shape:
        raise InputError(f"{what}: array is empty (shape {shape})")


def _sample(array: Any, max_samples: int) -> np.ndarray:
    """A deterministic, spatially spread subsample: evenly spaced slices, each strided in y and x."""
    shape = tuple(array.shape)
    total = int(np.prod(shape))
    if total <= max_samples:
        return np.asarray(array[...]).ravel()
    if len(shape) == 2:
        stride = int(np.ceil(np.sqrt(total / max_samples)))
        return np.asarray(array[::stride, ::stride]).ravel()
    n_slices = min(shape[0], 32)
    per_slice = max_samples // n_slices
    stride = max(1, int(np.ceil(np.sqrt(shape[1] * shape[2] / per_slice))))
    indices = np.unique(np.linspace(0, shape[0] - 1, n_slices).round().astype(int))
    return np.concatenate([np.asarray(array[int(i), ::stride, ::stride]).ravel() for i in indices])


def intensity_limits(array: Any, low: float = LOW_PERCENTILE, high: float = HIGH_PERCENTILE,
                     max_samples: int = MAX_LIMIT_SAMPLES, name: str = "array") -> tuple[float, float]:
    """(lo, hi) intensities that to_uint8 maps to 0 and 255.

    Rule: the `low` and `high` percentiles (0.1 / 99.9 by default) of the actual values, computed on at most
    `max_samples` values spread evenly through the data (32 slices for a volume), so one call on a
    VolumeReader or lazy array reads only a little. If the percentiles coincide (an almost constant image with a
    few outliers) the sample's min and max are used. uint8 data gives (0, 255), matching to_uint8's pass-through.
    NaN/inf values raise InputError.
    """
    label = getattr(array, "path", None) or name
    if not hasattr(array, "shape"):
        array = np.asarray(array)
    _check_array(array, str(label))
    if np.dtype(array.dtype) == np.uint8:
        return 0.0, 255.0
    sample = _sample(array, max_samples)
    if sample.dtype == bool:
        sample = sample.astype(np.uint8)
    if sample.dtype.kind == "c":
        raise InputError(f"{label}: complex data cannot be converted to an image")
    if sample.dtype.kind == "f" and not np.all(np.isfinite(sample)):
        raise InputError(f"{label}: contains NaN or infinite values")
    lo, hi = np.percentile(sample, [low, high])
    if not hi > lo:
        lo, hi = sample.min(), sample.max()
    return float(lo), float(hi)


def to_uint8(array: Any, limits: tuple[float, float] | None = None, name: str = "array") -> np.ndarray:
    """Convert a 2D/3D array to uint8 for the stages.

    uint8 passes through unchanged (no copy); bool becomes 0/255; every other integer or float array is
    rescaled linearly so that ``limits`` (default: intensity_limits(array), the 0.1-99.9 percentile range of
    the actual values) maps to 0..255, values outside are clipped. Negative values are fine. A constant image
    becomes all zeros. NaN/inf, empty arrays and arrays that are not 2D/3D raise InputError (`name`, or a
    reader's path, is used in the message). Pass the same `limits` to every slice of a streamed volume.
    """
    label = getattr(array, "path", None) or name
    if not hasattr(array, "shape"):
        array = np.asarray(array)
    _check_array(array, str(label))
    data = np.asarray(array[...]) if not isinstance(array, np.ndarray) else array
    if data.dtype == np.uint8:
        return data
    if data.dtype == bool:
        return data.astype(np.uint8) * np.uint8(255)
    if data.dtype.kind not in "uif":
        raise InputError(f"{label}: cannot convert {data.dtype} data to an image")
    if data.dtype.kind == "f" and not np.all(np.isfinite(data)):
        raise InputError(f"{label}: contains NaN or infinite values")
    lo, hi = limits if limits is not None else intensity_limits(data, name=str(label))
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise InputError(f"{label}: intensity limits must be finite, got ({lo}, {hi})")
    if hi <= lo:
        return np.zeros(data.shape, dtype=np.uint8)
    out = np.empty(data.shape, dtype=np.uint8)
    scale = 255.0 / (float(hi) - float(lo))
    flat_in = data.reshape(-1)
    flat_out = out.reshape(-1)
    step = 1 << 22  # convert in blocks so a big volume never gets a full-size float64 copy
    for start in range(0, flat_in.size, step):
        block = (flat_in[start:start + step].astype(np.float64) - float(lo)) * scale
        np.clip(block, 0.0, 255.0, out=block)
        flat_out[start:start + step] = np.rint(block)
    return out


def torch_bytes(obj: Any) -> bytes:
    """torch.save into memory: written to disk with Python's own I/O, a full disk is an OSError that names its
    reason (torch's writer reports it as 'unexpected pos ...'), and the bytes can go to a rescue path unchanged."""
    import io as _io

    import torch

    buffer = _io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def load_torch_dict(path: str | os.PathLike, what: str = "checkpoint") -> dict:
    """A torch file of tensors and plain types as a dict (`torch.load(..., weights_only=True)`), or an InputError
    naming the file in one line. A file that needs other Python objects is refused: loading it could run code
    (torch's own message would advise weights_only=False; that advice is never passed on)."""
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: {what} not found")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "unsupported global" not in str(exc).lower():  # not a torch file: truncated, text, another format
            raise InputError(f"{path}: not a loadable {what} (not a torch file, or truncated)") from None
        raise InputError(f"{path}: holds Python objects other than tensors and plain types; refused (loading it "
                         "could run code from the file). Save it as a dict of tensors.") from None
    except Exception as exc:  # zip errors, EOF, ...: all mean "not usable"
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        raise InputError(f"{path}: not a loadable {what} ({exc.__class__.__name__}: {first})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: {what} is a {type(data).__name__}, expected a dict")
    return data
