"""cellemnet.synthetic: deterministic, distinct looks, masks that match the pixels, files in the agreed layouts."""
from __future__ import annotations

import numpy as np
import pytest

from cellemnet import io, synthetic


def test_looks_listed():
    assert len(synthetic.LOOKS) >= 4
    assert {"tem", "sem_inverted", "fib_sem", "sstem", "cryo"} <= set(synthetic.LOOKS)
    with pytest.raises(ValueError, match="unknown look"):
        synthetic.make_image((64, 64), look="xray")


def test_image_types_and_masks():
    image, masks = synthetic.make_image((128, 160), "tem", seed=3)
    assert image.shape == (128, 160) and image.dtype == np.uint8
    assert set(masks) == {"mito", "nucleus", "membrane", "vesicle"}
    for mask in masks.values():
        assert mask.shape == image.shape and mask.dtype == bool
    assert masks["mito"].any() and masks["membrane"].any()
    assert not (masks["mito"] & masks["nucleus"]).any()
    assert not (masks["mito"] & masks["membrane"]).any()
    assert image.std() > 10


def test_same_seed_same_output_different_seed_differs():
    a, ma = synthetic.make_image((96, 96), "sstem", seed=11)
    b, mb = synthetic.make_image((96, 96), "sstem", seed=11)
    c, _ = synthetic.make_image((96, 96), "sstem", seed=12)
    np.testing.assert_array_equal(a, b)
    for key in ma:
        np.testing.assert_array_equal(ma[key], mb[key])
    assert not np.array_equal(a, c)
    v1, _ = synthetic.make_volume((4, 48, 48), "fib_sem", seed=5)
    v2, _ = synthetic.make_volume((4, 48, 48), "fib_sem", seed=5)
    np.testing.assert_array_equal(v1, v2)


def test_looks_differ():
    stats = {}
    for look in synthetic.LOOKS:
        image, _ = synthetic.make_image((192, 192), look, seed=0)
        stats[look] = (float(image.mean()), float(image.std()), float(np.abs(np.diff(image.astype(float))).mean()))
    values = list(stats.values())
    for i in range(len(values)):
        for j in range(i + 1, len(values)):
            assert np.abs(np.subtract(values[i], values[j])).max() > 2.0, (list(stats)[i], list(stats)[j])


@pytest.mark.parametrize("look", ["tem", "sstem", "fib_sem"])
def test_membranes_dark_in_tem_like_looks(look):
    image, masks = synthetic.make_image((256, 256), look, seed=1)
    cytoplasm = ~(masks["membrane"] | masks["mito"] | masks["nucleus"] | masks["vesicle"])
    assert image[masks["membrane"]].mean() < image[cytoplasm].mean() - 15
    assert image[masks["mito"]].mean() < image[cytoplasm].mean() - 15


def test_inverted_look_has_bright_membranes():
    image, masks = synthetic.make_image((256, 256), "sem_inverted", seed=1)
    cytoplasm = ~(masks["membrane"] | masks["mito"] | masks["nucleus"] | masks["vesicle"])
    assert image[masks["membrane"]].mean() > image[cytoplasm].mean() + 15


def test_mito_have_cristae_texture():
    image, masks = synthetic.make_image((256, 256), "tem", seed=2)
    inner = masks["mito"]
    # cristae stripes: far more variation inside mitochondria than in the same area of plain cytoplasm
    cytoplasm = ~(masks["membrane"] | masks["mito"] | masks["nucleus"] | masks["vesicle"])
    assert image[inner].std() > 1.3 * image[cytoplasm].std()


def test_volume_structures_continue_through_z():
    volume, masks = synthetic.make_volume((8, 96, 96), "fib_sem", seed=4)
    assert volume.shape == (8, 96, 96) and volume.dtype == np.uint8
    mito = masks["mito"]
    assert mito.any()
    overlaps = [(mito[k] & mito[k + 1]).sum() / max(1, (mito[k] | mito[k + 1]).sum()) for k in range(7)]
    assert min(overlaps) > 0.5  # neighbouring sections share most of their mitochondria
    assert np.corrcoef(volume[3].ravel(), volume[4].ravel())[0, 1] > 0.3


def test_anisotropic_volume_changes_faster_in_z():
    iso, m_iso = synthetic.make_volume((6, 96, 96), "tem", seed=6, spacing=(1, 1, 1))
    aniso, m_aniso = synthetic.make_volume((6, 96, 96), "tem", seed=6, spacing=(8, 1, 1))

    def z_overlap(mask):
        return np.mean([(mask[k] & mask[k + 1]).sum() / max(1, (mask[k] | mask[k + 1]).sum())
                        for k in range(mask.shape[0] - 1)])

    assert z_overlap(m_aniso["mito"]) < z_overlap(m_iso["mito"])


def test_uninformative_images_are_flat_or_noise():
    resin = synthetic.make_uninformative((64, 64), "resin", seed=0)
    noise = synthetic.make_uninformative((64, 64), "noise", seed=0)
    real, _ = synthetic.make_image((64, 64), "tem", seed=0)
    assert resin.dtype == np.uint8 and resin.std() < 8
    # noise has no spatial structure: neighbouring pixels are uncorrelated
    assert abs(np.corrcoef(noise[:, :-1].ravel(), noise[:, 1:].ravel())[0, 1]) < 0.1
    assert np.corrcoef(real[:, :-1].ravel(), real[:, 1:].ravel())[0, 1] > 0.5


def test_make_corpus_layout(tmp_path):
    manifest = synthetic.make_corpus(tmp_path / "corpus", n_groups_2d=3, images_per_group=2, n_volumes=3,
                                     image_shape=(96, 96), volume_shape=(6, 64, 64), seed=1)
    groups = sorted(p.name for p in (tmp_path / "corpus" / "images2d").iterdir())
    assert len(groups) == 3 and groups == sorted(manifest["images2d"])
    tifs = sorted((tmp_path / "corpus" / "images2d").rglob("*.tif"))
    assert len(tifs) == 3 * 2 + 2  # plus one blank-resin and one noise image
    assert len(manifest["uninformative"]) == 2
    raw16 = io.read_image(manifest["images2d"][groups[[g.endswith("2") for g in groups].index(True)]][0])
    assert raw16.dtype == np.uint16 and io.to_uint8(raw16).std() > 10
    volumes = sorted((tmp_path / "corpus" / "volumes").glob("*.nrrd"))
    assert len(volumes) == 3
    spacings = {p.name: io.read_volume(p)[1] for p in volumes}
    assert any(s[0] / s[2] > 1.25 for s in spacings.values())  # an anisotropic stack
    assert any(s[0] == s[2] for s in spacings.values())  # an isotropic one
    assert any("video" in name for name in spacings)


def test_make_corpus_is_deterministic(tmp_path):
    a = synthetic.make_corpus(tmp_path / "a", n_groups_2d=1, images_per_group=1, n_volumes=1,
                              image_shape=(64, 64), volume_shape=(3, 48, 48), seed=7)
    b = synthetic.make_corpus(tmp_path / "b", n_groups_2d=1, images_per_group=1, n_volumes=1,
                              image_shape=(64, 64), volume_shape=(3, 48, 48), seed=7)
    for pa, pb in zip(a["volumes"] + sum(a["images2d"].values(), []), b["volumes"] + sum(b["images2d"].values(), [])):
        assert pa.name == pb.name
        np.testing.assert_array_equal(io.read_volume(pa)[0], io.read_volume(pb)[0])


def test_make_benchmark_layout(tmp_path):
    out = tmp_path / "bench"
    written = synthetic.make_benchmark(out, n_train=3, n_test=2, shape=(96, 96), target="mito", seed=0,
                                       volume_shape=(4, 64, 64))
    for split, count in (("train", 3), ("valid", 2), ("test2d", 2)):
        images = sorted((out / split / "images").glob("*.tif"))
        masks = sorted((out / split / "masks").glob("*.tif"))
        assert len(images) == count and [p.name for p in images] == [p.name for p in masks]
        mask = io.read_image(masks[0])
        assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
        assert io.read_image(images[0]).shape == (96, 96)
    image3d, _ = io.read_volume(out / "test3d" / "images" / "test3d_000.nrrd")
    mask3d, _ = io.read_volume(out / "test3d" / "masks" / "test3d_000.nrrd")
    assert image3d.shape == mask3d.shape == (4, 64, 64) and image3d.dtype == np.uint8
    assert set(np.unique(mask3d)) == {0, 1}
    assert len(written["train"]) == 3
    with pytest.raises(ValueError, match="unknown target"):
        synthetic.make_benchmark(tmp_path / "x", target="golgi")
