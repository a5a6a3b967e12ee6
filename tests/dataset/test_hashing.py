"""dHash: bit for bit equal to the original's imagehash call, single and batch, on synthetic and real patches."""
import numpy as np
import pytest

from cellemnet.dataset.hashing import (
    dhash,
    dhash_batch,
    dhash_boxes,
    dhash_reference,
    hamming,
    resample_weights,
)


def _random_patches(n, seed):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        h = 224 if i % 3 == 0 else int(rng.integers(1, 225))
        w = 224 if i % 4 == 0 else int(rng.integers(1, 225))
        kind = i % 4
        if kind == 0:
            p = rng.integers(0, 256, (h, w), dtype=np.uint8)
        elif kind == 1:  # smooth structures give many near-ties in the shrunk image
            yy, xx = np.mgrid[:h, :w]
            p = (127 + 120 * np.sin(yy / rng.uniform(2, 40) + xx / rng.uniform(2, 40))).astype(np.uint8)
        elif kind == 2:  # low contrast
            p = np.clip(rng.normal(128, 3, (h, w)), 0, 255).astype(np.uint8)
        else:  # saturated: exercises the clipping of both passes
            p = np.where(rng.random((h, w)) < 0.5, 0, 255).astype(np.uint8)
        out.append(p)
    return out


def test_matches_imagehash_on_random_patches_of_any_size():
    patches = _random_patches(160, seed=0)
    expected = [dhash_reference(p) for p in patches]
    assert [dhash(p) for p in patches] == expected
    assert dhash_batch(patches).tolist() == expected


@pytest.mark.parametrize("shape", [(1, 1), (1, 224), (224, 1), (2, 3), (111, 224), (224, 113), (223, 223)])
def test_odd_edge_patch_sizes(shape):
    rng = np.random.default_rng(sum(shape))
    p = rng.integers(0, 256, shape, dtype=np.uint8)
    assert dhash(p) == dhash_reference(p)


@pytest.mark.parametrize("crop_size,hash_size", [(224, 8), (128, 8), (64, 4), (256, 2)])
def test_other_crop_and_hash_sizes(crop_size, hash_size):
    for p in _random_patches(12, seed=crop_size + hash_size):
        p = p[:crop_size, :crop_size]
        assert dhash(p, crop_size, hash_size) == dhash_reference(p, crop_size, hash_size)


def test_larger_than_crop_size_falls_back_to_pillow():
    p = np.random.default_rng(5).integers(0, 256, (300, 250), dtype=np.uint8)
    assert dhash(p) == dhash_reference(p)


def test_boxes_hash_in_place_equals_cut_patches():
    rng = np.random.default_rng(7)
    image = rng.integers(0, 256, (500, 470), dtype=np.uint8)
    boxes = [(0, 224, 0, 224), (224, 448, 224, 448), (448, 500, 0, 224), (0, 224, 448, 470), (448, 500, 448, 470)]
    got = dhash_boxes(image, boxes)
    assert got.dtype == np.uint64
    assert got.tolist() == [dhash_reference(image[a:b, c:d]) for a, b, c, d in boxes]
    stack = rng.integers(0, 256, (6, 224, 224), dtype=np.uint8)
    assert dhash_batch(stack).tolist() == [dhash_reference(p) for p in stack]


def test_bad_boxes_and_inputs():
    image = np.zeros((100, 100), np.uint8)
    with pytest.raises(ValueError):
        dhash_boxes(image, [(0, 0, 0, 10)])
    with pytest.raises(ValueError):
        dhash_boxes(image, [(0, 50, 90, 120)])
    with pytest.raises(ValueError):
        dhash(np.zeros((10, 10), np.uint16))
    with pytest.raises(ValueError):
        dhash(image, hash_size=9)
    assert dhash_boxes(image, np.zeros((0, 4), int)).tolist() == []


def test_weights_are_normalised_fixed_point():
    starts, counts, weights = resample_weights(224, 9, "lanczos")
    sums = weights.sum(axis=1)
    assert np.all(np.abs(sums - (1 << 22)) <= counts)  # each row sums to 1.0 up to rounding of each weight
    assert starts[0] == 0 and starts[-1] + counts[-1] == 224


def test_hamming():
    assert hamming(0b1011, 0b0001) == 2
    assert hamming(2**64 - 1, 0) == 64


@pytest.mark.shared_data
def test_matches_imagehash_on_real_em_patches(shared_data):
    from cellemnet.io import read_image, read_volume, to_uint8

    patches = []
    for path in sorted((shared_data / "cem-examples" / "occlusion").glob("*.tiff")):
        patches.append(to_uint8(read_image(path)))
    for path in sorted((shared_data / "isbi2012" / "train" / "images").glob("*.png"))[:4]:
        image = to_uint8(read_image(path))  # 512 x 512: grid 2 x 2 with 64-pixel edge strips
        for y0 in (0, 224, 448):
            for x0 in (0, 224, 448):
                patches.append(image[y0 : y0 + 224, x0 : x0 + 224])
    volume, _ = read_volume(shared_data / "cryoet" / "tomo.tif")
    tomo = to_uint8(np.asarray(volume))
    patches += [tomo[50], tomo[:, 60, :], tomo[:, :, 7][:101, :100]]
    assert len(patches) > 40
    assert [dhash(p) for p in patches] == [dhash_reference(p) for p in patches]
