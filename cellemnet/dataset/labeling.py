"""Hand-labelling patches as good / bad for the patch classifier: the paging and bookkeeping, plus a thin
ipywidgets grid on top (notebooks/labeling.ipynb).

A labels CSV has two columns, `image,label`. `image` is an image file path, or `SHARD.h5::PATCH NAME` for a
patch inside a patch shard; `label` is good, bad or none (none = not labelled yet / skipped). The session
keeps every row it read, so labelling a subset never loses other rows, and saves atomically.
"""
from __future__ import annotations

import csv
import io as _io
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from cellemnet.dataset.store import ShardReader
from cellemnet.errors import InputError
from cellemnet.io import atomic_write_text, is_image_file, read_image, to_uint8

LABELS = ("good", "bad", "none")
UI_CHOICES = {"good": "good", "bad": "bad", "skip": "none"}  # what the grid shows -> what the CSV stores
SHARD_SEPARATOR = "::"
CSV_COLUMNS = ("image", "label")


# ------------------------------------------------------------------------------------------------ references
def shard_ref(shard_path: str | os.PathLike, name: str) -> str:
    return f"{shard_path}{SHARD_SEPARATOR}{name}"


def split_ref(ref: str) -> tuple[str, str | None]:
    """'a.h5::name' -> ('a.h5', 'name'); a plain path -> (path, None)."""
    if SHARD_SEPARATOR in ref:
        path, name = ref.split(SHARD_SEPARATOR, 1)
        return path, name
    return ref, None


class PatchLoader:
    """Reads the patch a reference points at as 2D uint8, keeping shards open between calls."""

    def __init__(self):
        self._readers: dict[str, tuple[object, dict[str, int]]] = {}

    def _shard(self, path: str):
        if path not in self._readers:
            if not Path(path).is_file():
                raise InputError(f"{path}: patch shard not found")
            reader = ShardReader(path)
            self._readers[path] = (reader, {n: i for i, n in enumerate(reader.names)})
        return self._readers[path]

    def has(self, ref: str) -> bool:
        path, name = split_ref(ref)
        if name is None:
            return Path(path).is_file()
        if not Path(path).is_file():
            return False
        return name in self._shard(path)[1]

    def __call__(self, ref: str) -> np.ndarray:
        path, name = split_ref(ref)
        if name is None:
            return to_uint8(read_image(path), name=path)
        reader, index = self._shard(path)
        if name not in index:
            raise InputError(f"{path}: no patch named {name!r}")
        return reader.read(index[name])


# ------------------------------------------------------------------------------------------------ sources
def items_from_folder(folder: str | os.PathLike, recursive: bool = True) -> list[str]:
    """Every image file under `folder`, sorted, as absolute labels-CSV references."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: folder of patches not found")
    folder = folder.resolve()  # absolute references stay valid wherever the CSV is read from
    paths = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(str(p) for p in paths if p.is_file() and is_image_file(p) and not p.name.startswith("."))


def items_from_shard(shard_path: str | os.PathLike, limit: int | None = None, seed: int = 0) -> list[str]:
    """Absolute references to the patches of one shard; `limit` draws that many at random (seeded), in shard
    order."""
    shard_path = Path(shard_path).resolve()
    names = list(ShardReader(shard_path).names)
    if limit is not None and limit < len(names):
        pick = np.sort(np.random.default_rng(seed).choice(len(names), size=limit, replace=False))
        names = [names[i] for i in pick]
    return [shard_ref(shard_path, n) for n in names]


# ------------------------------------------------------------------------------------------------ labels CSV
def read_labels_csv(path: str | os.PathLike) -> dict[str, str]:
    """{image reference: label} from a labels CSV; unknown labels or a bad header raise InputError naming it."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: labels CSV not found")
    labels: dict[str, str] = {}
    try:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None or not set(CSV_COLUMNS) <= set(reader.fieldnames):
                raise InputError(f"{path}: expected a header with columns {','.join(CSV_COLUMNS)}, "
                                 f"got {reader.fieldnames}")
            for line, row in enumerate(reader, start=2):
                label = (row["label"] or "").strip().lower()
                image = (row["image"] or "").strip()
                if label not in LABELS:
                    raise InputError(f"{path}: line {line}: unknown label {row['label']!r} "
                                     f"(expected one of {', '.join(LABELS)})")
                if not image:
                    raise InputError(f"{path}: line {line}: empty image path")
                labels[image] = label
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{path}: cannot read labels CSV ({exc})") from None
    return labels


def write_labels_csv(path: str | os.PathLike, labels: dict[str, str]) -> Path:
    buf = _io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(CSV_COLUMNS)
    for image, label in labels.items():
        writer.writerow((image, label))
    atomic_write_text(path, buf.getvalue())
    return Path(path)


def resolve_ref(ref: str, base: str | os.PathLike) -> str:
    """A relative image path (or shard path) in a labels CSV is relative to the CSV's folder."""
    path, name = split_ref(ref)
    if os.path.isabs(path):
        return ref
    full = str(Path(base) / path)
    return full if name is None else shard_ref(full, name)


def labelled_examples(labels_csv: str | os.PathLike, min_labelled: int = 0,
                      loader: PatchLoader | None = None) -> tuple[list[str], np.ndarray]:
    """(resolved references, bool array True = good) of the good/bad rows; each referenced file must exist."""
    labels = read_labels_csv(labels_csv)
    loader = loader if loader is not None else PatchLoader()
    base = Path(labels_csv).parent
    refs, good = [], []
    for ref, label in labels.items():
        if label == "none":
            continue
        resolved = resolve_ref(ref, base)
        try:
            present = loader.has(resolved)
        except InputError as exc:
            raise InputError(f"{labels_csv}: {exc}") from None
        if not present:
            raise InputError(f"{labels_csv}: labelled image not found: {ref}")
        refs.append(resolved)
        good.append(label == "good")
    if len(refs) < min_labelled:
        raise InputError(f"{labels_csv}: {len(refs)} patches labelled good/bad, at least {min_labelled} needed")
    return refs, np.array(good, dtype=bool)


# ------------------------------------------------------------------------------------------------ session
class LabelSession:
    """Pages through `items`, records labels, resumes from and saves to `labels_csv`.

    Rows of the CSV that are not among `items` are kept untouched. Saving happens on every page change and on
    save(); a crash loses at most the current page.
    """

    def __init__(self, items: Sequence[str], labels_csv: str | os.PathLike, page_size: int = 50,
                 loader: Callable[[str], np.ndarray] | None = None):
        if page_size < 1:
            raise ValueError("page_size must be >= 1")
        self.labels_csv = Path(labels_csv)
        self.items = list(dict.fromkeys(items))  # unique, order kept
        self.page_size = page_size
        self.loader = loader if loader is not None else PatchLoader()
        self.labels: dict[str, str] = read_labels_csv(self.labels_csv) if self.labels_csv.exists() else {}
        for ref in self.items:
            self.labels.setdefault(ref, "none")
        self.page = self.first_unlabelled_page()

    @property
    def n_pages(self) -> int:
        return max(1, -(-len(self.items) // self.page_size))

    def page_items(self, page: int | None = None) -> list[str]:
        page = self.page if page is None else page
        return self.items[page * self.page_size:(page + 1) * self.page_size]

    def first_unlabelled_page(self) -> int:
        for i, ref in enumerate(self.items):
            if self.labels[ref] == "none":
                return i // self.page_size
        return self.n_pages - 1

    def go_to(self, page: int, save: bool = True) -> list[str]:
        if save:
            self.save()
        self.page = min(max(page, 0), self.n_pages - 1)
        return self.page_items()

    def next_page(self) -> list[str]:
        return self.go_to(self.page + 1)

    def previous_page(self) -> list[str]:
        return self.go_to(self.page - 1)

    def mark(self, ref: str, choice: str) -> None:
        """choice: good / bad / skip (or none)."""
        label = UI_CHOICES.get(choice, choice)
        if label not in LABELS:
            raise ValueError(f"unknown label {choice!r}; choose good, bad or skip")
        if ref not in self.labels:
            raise KeyError(ref)
        self.labels[ref] = label

    def mark_page(self, choice: str) -> None:
        for ref in self.page_items():
            self.mark(ref, choice)

    def label(self, ref: str) -> str:
        return self.labels[ref]

    def counts(self) -> dict[str, int]:
        out = {label: 0 for label in LABELS}
        for ref in self.items:
            out[self.labels[ref]] += 1
        return out

    def save(self) -> Path:
        return write_labels_csv(self.labels_csv, self.labels)

    def image(self, ref: str) -> np.ndarray:
        return self.loader(ref)

    def thumbnail_png(self, ref: str, size: int = 128) -> bytes:
        import cv2

        img = self.image(ref)
        scale = size / max(img.shape)
        img = cv2.resize(img, (max(1, round(img.shape[1] * scale)), max(1, round(img.shape[0] * scale))),
                         interpolation=cv2.INTER_AREA)
        ok, data = cv2.imencode(".png", img)
        if not ok:
            raise InputError(f"{ref}: cannot encode a thumbnail")
        return data.tobytes()


# ------------------------------------------------------------------------------------------------ widget
def build_label_grid(session: LabelSession, columns: int = 10, thumb_size: int = 128):
    """An ipywidgets grid over `session`: a thumbnail and good / bad / skip buttons per patch, page buttons.

    Returns the top-level widget; `.cells` holds the (Image, ToggleButtons) of the current page and
    `.refresh()` redraws it (both used by tests, which run without a browser).
    """
    import ipywidgets as w

    status = w.HTML()
    grid = w.GridBox(layout=w.Layout(grid_template_columns=f"repeat({columns}, {thumb_size + 16}px)"))
    prev_btn, next_btn, save_btn = w.Button(description="< Previous"), w.Button(description="Next >"), \
        w.Button(description="Save")
    all_bad, all_good = w.Button(description="Page: all bad"), w.Button(description="Page: all good")
    ui_of = {label: ui for ui, label in UI_CHOICES.items()}
    box = w.VBox()

    def update_status(note: str = "") -> None:
        c = session.counts()
        status.value = (f"page {session.page + 1}/{session.n_pages} &nbsp; good {c['good']} &nbsp; bad {c['bad']}"
                        f" &nbsp; unlabelled {c['none']} &nbsp; {note}")

    def make_cell(ref: str):
        image = w.Image(value=session.thumbnail_png(ref, thumb_size), format="png",
                        layout=w.Layout(width=f"{thumb_size}px", height=f"{thumb_size}px"))
        toggle = w.ToggleButtons(options=list(UI_CHOICES), value=ui_of[session.label(ref)],
                                 style={"button_width": f"{thumb_size // 3 - 2}px"})

        def on_change(change, ref=ref):
            session.mark(ref, change["new"])
            update_status()

        toggle.observe(on_change, names="value")
        return image, toggle

    def refresh() -> None:
        box.cells = [make_cell(ref) for ref in session.page_items()]
        grid.children = [w.VBox([img, tog]) for img, tog in box.cells]
        update_status()

    def set_page_label(choice):
        for _, toggle in box.cells:
            toggle.value = choice

    prev_btn.on_click(lambda _: (session.previous_page(), refresh()))
    next_btn.on_click(lambda _: (session.next_page(), refresh()))
    save_btn.on_click(lambda _: update_status(f"saved to {session.save()}"))
    all_bad.on_click(lambda _: set_page_label("bad"))
    all_good.on_click(lambda _: set_page_label("good"))
    box.children = [w.HBox([prev_btn, next_btn, save_btn, all_good, all_bad]), status, grid]
    box.refresh = refresh
    box.session = session
    refresh()
    return box

