"""Overlapping tiles and seamless stitching: exact round trip, no seams, bounded memory."""

import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model.segment.tiles import (
    TileStitcher,
    blend_weights,
    extract_tile,
    iter_tiles,
    plan_tiles,
    predict_tiled,
    reflect_indices,
    stitch_tiles,
)


@st.composite
def geometries(draw):
    tile = draw(st.sampled_from([64, 96, 128]))
    overlap = draw(st.integers(0, tile // 2))
    height = draw(st.integers(1, 400))
    width = draw(st.integers(1, 400))
    return height, width, tile, overlap


@settings(max_examples=60, deadline=None)
@given(geometries(), st.integers(0, 2**32 - 1))
def test_round_trip_is_exact_for_any_size(geometry, seed):
    height, width, tile, overlap = geometry
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (height, width), dtype=np.uint8)
    grid = plan_tiles(height, width, tile, overlap)
    stitched = stitch_tiles(grid, ((t, p.astype(np.float32)) for t, p in iter_tiles(image, grid)))
    assert stitched.shape == image.shape
    assert np.array_equal(np.rint(stitched).astype(np.uint8), image)
    assert np.allclose(stitched, image, rtol=0, atol=1e-3)


@settings(max_examples=30, deadline=None)
@given(geometries())
def test_tiles_cover_the_padded_image_with_the_requested_overlap(geometry):
    height, width, tile, overlap = geometry
    grid = plan_tiles(height, width, tile, overlap)
    for starts, size, pad in (
        (grid.y_starts, height, grid.pad_y),
        (grid.x_starts, width, grid.pad_x),
    ):
        assert starts[0] == 0
        assert starts[-1] + tile >= size + 2 * pad  # covers the whole padded axis
        assert starts[-1] + tile - pad >= size  # ... hence the whole image
        gaps = np.diff(starts)
        assert np.all(tile - gaps >= overlap)  # neighbours overlap by at least `overlap`
        assert np.all(gaps > 0)


def test_float_round_trip_through_batched_prediction():
    rng = np.random.default_rng(1)
    image = rng.random((1000, 777), dtype=np.float32)
    grid = plan_tiles(1000, 777, 256, 64)
    out = predict_tiled(image, lambda batch: batch, grid, batch_size=3)
    assert np.max(np.abs(out - image)) < 1e-6


def test_multichannel_round_trip():
    rng = np.random.default_rng(2)
    image = rng.random((130, 90, 3), dtype=np.float32)
    grid = plan_tiles(130, 90, 64, 16)
    out = stitch_tiles(grid, iter_tiles(image, grid))
    assert out.shape == image.shape
    assert np.max(np.abs(out - image)) < 1e-6


def test_image_smaller_than_a_tile_uses_one_centred_tile():
    grid = plan_tiles(100, 300, 512, 64)
    assert len(grid) == 1
    image = np.arange(100 * 300, dtype=np.float32).reshape(100, 300)
    tile = extract_tile(image, grid, next(iter(grid)))
    assert tile.shape == (512, 512)
    assert np.array_equal(tile[grid.pad_y : grid.pad_y + 100, grid.pad_x : grid.pad_x + 300], image)


def test_reflection_mirrors_and_repeats():
    assert reflect_indices(-3, 6, 4).tolist() == [2, 1, 0, 0, 1, 2, 3, 3, 2]
    assert reflect_indices(-2, 3, 1).tolist() == [0, 0, 0, 0, 0]


def test_blending_leaves_no_seam():
    # Each tile predicts a different constant: without blending the stitched map would jump
    # by the full difference at tile borders; with the taper it changes gradually.
    grid = plan_tiles(600, 600, 128, 64)
    tiles = [(t, np.full((128, 128), float(t.index % 2), np.float32)) for t in grid]
    out = stitch_tiles(grid, tiles)
    steps = max(np.abs(np.diff(out, axis=0)).max(), np.abs(np.diff(out, axis=1)).max())
    assert steps < 0.1


def test_blend_weights_shape():
    weights = blend_weights(128, 32)
    assert weights.shape == (128, 128)
    assert weights.min() > 0
    assert weights[64, 64] == pytest.approx(1.0, abs=1e-3)
    assert weights[16, 64] == pytest.approx(0.5, abs=0.05)  # middle of the overlap
    assert np.all(blend_weights(64, 0) == 1.0)


def test_stitcher_refuses_out_of_order_and_wrong_shapes():
    grid = plan_tiles(200, 200, 64, 16)
    tiles = list(grid)
    stitcher = TileStitcher(grid)
    with pytest.raises(ValueError, match="in order"):
        stitcher.add(tiles[1], np.zeros((64, 64), np.float32))
    with pytest.raises(ValueError, match="shape"):
        stitcher.add(tiles[0], np.zeros((32, 32), np.float32))
    stitcher.add(tiles[0], np.zeros((64, 64), np.float32))
    with pytest.raises(ValueError, match="tiles were added"):
        stitcher.finish()


@pytest.mark.parametrize(
    ("height", "width", "tile", "overlap"),
    [(0, 5, 64, 0), (5, 5, 8, 0), (100, 100, 64, 40)],
)
def test_bad_geometry_is_refused(height, width, tile, overlap):
    with pytest.raises(ValueError):
        plan_tiles(height, width, tile, overlap)


def test_stitching_memory_does_not_grow_with_image_height():
    # Peak numpy allocations beyond the output must stay about one band of accumulators,
    # whether the image is 1000 or 4000 rows tall.
    def peak_extra_bytes(height):
        width = 600
        grid = plan_tiles(height, width, 128, 32)
        out = np.empty((height, width), np.float32)
        tracemalloc.start()
        stitch_tiles(grid, ((t, np.ones((128, 128), np.float32)) for t in grid), out=out)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return peak

    small, tall = peak_extra_bytes(1000), peak_extra_bytes(4000)
    band = 128 * (600 + 32) * 4
    assert tall < 6 * band
    assert tall < 1.5 * small
