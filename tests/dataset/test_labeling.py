"""Labelling logic without a browser: paging, marks, resume, atomic CSV, the widget grid driven headless."""
import numpy as np
import pytest

from cellemnet.dataset.labeling import (
    LabelSession,
    PatchLoader,
    build_label_grid,
    items_from_folder,
    labelled_examples,
    read_labels_csv,
    write_labels_csv,
)
from cellemnet.errors import InputError
from cellemnet.io import write_image


@pytest.fixture
def patch_folder(tmp_path):
    folder = tmp_path / "patches"
    rng = np.random.default_rng(0)
    for i in range(7):
        write_image(folder / f"p{i}.tiff", rng.integers(0, 255, (32, 32), dtype=np.uint8))
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_items_from_folder_lists_images_only(patch_folder):
    items = items_from_folder(patch_folder)
    assert [p.rsplit("/", 1)[1] for p in items] == [f"p{i}.tiff" for i in range(7)]
    with pytest.raises(InputError, match="nowhere"):
        items_from_folder(patch_folder / "nowhere")


def test_paging_marking_saving_and_resume(patch_folder, tmp_path):
    items = items_from_folder(patch_folder)
    csv_path = tmp_path / "labels.csv"
    s = LabelSession(items, csv_path, page_size=3)
    assert s.n_pages == 3 and s.page == 0 and s.page_items() == items[:3]
    s.mark(items[0], "good")
    s.mark(items[1], "bad")
    s.mark(items[2], "skip")
    assert s.label(items[2]) == "none"
    s.next_page()  # saves
    assert read_labels_csv(csv_path)[items[0]] == "good"
    s.mark_page("good")
    s.next_page()
    assert s.page == 2 and s.page_items() == items[6:]
    assert s.next_page() == items[6:]  # stays on the last page
    assert s.counts() == {"good": 4, "bad": 1, "none": 2}
    with pytest.raises(ValueError):
        s.mark(items[0], "maybe")

    # a new session resumes on the first page that still holds an unlabelled patch (page 0: items[2] skipped)
    again = LabelSession(items, csv_path, page_size=3)
    assert again.counts() == {"good": 4, "bad": 1, "none": 2}
    assert again.page == 0
    again.mark(items[2], "bad")
    again.save()
    assert LabelSession(items, csv_path, page_size=3).page == 2


def test_rows_outside_the_session_are_kept(patch_folder, tmp_path):
    items = items_from_folder(patch_folder)
    csv_path = write_labels_csv(tmp_path / "labels.csv", {"/elsewhere/a.tiff": "bad"})
    s = LabelSession(items[:2], csv_path)
    s.mark(items[0], "good")
    s.save()
    assert read_labels_csv(csv_path) == {"/elsewhere/a.tiff": "bad", items[0]: "good", items[1]: "none"}


def test_bad_labels_csv_names_the_file(tmp_path, patch_folder):
    bad = tmp_path / "bad.csv"
    bad.write_text("image,label\na.tiff,great\n")
    with pytest.raises(InputError, match=r"bad.csv.*line 2.*great"):
        read_labels_csv(bad)
    header = tmp_path / "header.csv"
    header.write_text("path,quality\na.tiff,good\n")
    with pytest.raises(InputError, match="header.csv"):
        LabelSession([], header)
    missing = tmp_path / "missing.csv"
    write_labels_csv(missing, {str(patch_folder / "p0.tiff"): "good", "gone.tiff": "bad"})
    with pytest.raises(InputError, match=r"missing.csv.*gone.tiff"):
        labelled_examples(missing)
    before = missing.read_text()
    with pytest.raises(InputError, match="at least 64"):
        labelled_examples(write_labels_csv(tmp_path / "few.csv", {str(patch_folder / "p0.tiff"): "good"}), 64)
    assert missing.read_text() == before


def test_labelled_examples_resolves_relative_paths(patch_folder, tmp_path):
    csv_path = write_labels_csv(tmp_path / "labels.csv",
                                {"patches/p0.tiff": "good", "patches/p1.tiff": "bad", "patches/p2.tiff": "none"})
    refs, good = labelled_examples(csv_path)
    assert refs == [str(patch_folder / "p0.tiff"), str(patch_folder / "p1.tiff")]
    assert good.tolist() == [True, False]
    assert PatchLoader()(refs[0]).dtype == np.uint8


def test_widget_grid_headless(patch_folder, tmp_path):
    items = items_from_folder(patch_folder)
    s = LabelSession(items, tmp_path / "labels.csv", page_size=4)
    grid = build_label_grid(s, columns=2, thumb_size=48)
    assert len(grid.cells) == 4
    grid.cells[0][1].value = "bad"  # what a click does
    grid.cells[1][1].value = "good"
    assert s.label(items[0]) == "bad" and s.label(items[1]) == "good"
    assert "bad 1" in grid.children[1].value
    next_button = grid.children[0].children[1]
    next_button.click()
    assert s.page == 1 and len(grid.cells) == 3
    assert read_labels_csv(tmp_path / "labels.csv")[items[0]] == "bad"
    grid.children[0].children[4].click()  # page: all bad
    assert all(s.label(r) == "bad" for r in items[4:])


def test_patches_inside_a_shard_are_labelled_and_trainable_references(tmp_path):
    from cellemnet.dataset.labeling import items_from_shard, split_ref
    from cellemnet.dataset.store import write_shard

    rng = np.random.default_rng(1)
    patches = [rng.integers(0, 255, (16, 16 + i), dtype=np.uint8) for i in range(5)]
    shard = write_shard(tmp_path / "s.h5", [f"p{i}" for i in range(5)], patches, np.zeros(5, np.uint64))
    items = items_from_shard(shard)
    assert len(items) == 5 and split_ref(items[2]) == (str(shard), "p2")
    assert len(items_from_shard(shard, limit=3, seed=0)) == 3
    s = LabelSession(items, tmp_path / "labels.csv", page_size=2)
    assert np.array_equal(s.image(items[3]), patches[3])
    assert s.thumbnail_png(items[3], size=32)[:4] == b"\x89PNG"
    s.mark(items[0], "good")
    s.mark(items[1], "bad")
    s.save()
    refs, good = labelled_examples(tmp_path / "labels.csv")
    assert refs == items[:2] and good.tolist() == [True, False]
    write_labels_csv(tmp_path / "gone.csv", {str(shard) + "::nope": "good"})
    with pytest.raises(InputError, match=r"gone.csv.*nope"):
        labelled_examples(tmp_path / "gone.csv")
