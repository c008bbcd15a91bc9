"""Tests of the synthetic slide generator: determinism, ground-truth consistency, layouts."""

from __future__ import annotations

import dataclasses
import json

import cv2
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from model.errors import AmsegError
from model.image.io import read_image
from model.synth import (
    SlideSpec,
    SyntheticSlide,
    SynthSpecError,
    fit_grid_inside,
    generate_slide,
    random_spec,
    write_dataset_layout,
    write_training_layout,
)


def plain_spec(**changes: object) -> SlideSpec:
    """A regular grid fully inside a 256 px slide, without random irregularities."""
    spec = random_spec(5, height=256, width=256, rows=4, cols=4, mark_size=24, bit_depth=8)
    regular = dict(
        pitch_y=60.0,
        pitch_x=60.0,
        origin_y=38.0,
        origin_x=38.0,
        angle_deg=0.0,
        shear=0.0,
        shape="crescent",
        polarity="bright",
        contrast=0.9,
        missing_fraction=0.0,
        missing_rows=(),
        missing_cols=(),
        fragment_fraction=0.0,
        touching_fraction=0.0,
        row_shift=0.0,
        row_spacing_jitter=0.0,
        jitter=0.0,
        size_jitter=0.05,
        double_fraction=0.0,
        double_cols=(),
    )
    regular.update(changes)
    return dataclasses.replace(spec, **regular)


@pytest.fixture(scope="module")
def varied_slides() -> list[SyntheticSlide]:
    """A handful of fully random 256 px slides covering shapes, polarities and depths."""
    return [generate_slide(random_spec(seed, height=256, width=320), seed) for seed in range(8)]


def test_same_seed_gives_identical_arrays() -> None:
    spec = random_spec(11, height=200, width=240)
    first, second = generate_slide(spec, 3), generate_slide(spec, 3)
    assert first.image.tobytes() == second.image.tobytes()
    assert first.labels.tobytes() == second.labels.tobytes()
    assert np.array_equal(first.nodes, second.nodes)
    assert random_spec(11, height=200, width=240) == spec


def test_different_seed_gives_different_image() -> None:
    spec = random_spec(11, height=200, width=240)
    assert generate_slide(spec, 3).image.tobytes() != generate_slide(spec, 4).image.tobytes()
    assert random_spec(12, height=200, width=240) != spec


@pytest.mark.parametrize(("bit_depth", "dtype"), [(8, np.uint8), (16, np.uint16)])
def test_shapes_and_dtypes(bit_depth: int, dtype: type) -> None:
    spec = random_spec(2, height=150, width=190, bit_depth=bit_depth)
    slide = generate_slide(spec, 2)
    assert slide.image.shape == (150, 190) and slide.image.dtype == dtype
    assert slide.mask.shape == (150, 190) and slide.mask.dtype == np.bool_
    assert slide.labels.shape == (150, 190) and slide.labels.dtype == np.uint16
    assert slide.nodes.shape == (spec.rows * spec.cols, 2)
    assert slide.present.shape == (spec.rows * spec.cols,) and slide.present.dtype == np.bool_


def test_sixteen_bit_uses_more_than_256_levels() -> None:
    slide = generate_slide(plain_spec(bit_depth=16, signal_bits=12), 1)
    assert len(np.unique(slide.image)) > 256
    assert int(slide.image.max()) > 255  # not a 0..255 image stored in uint16


def test_labels_match_mask_and_present(varied_slides: list[SyntheticSlide]) -> None:
    for slide in varied_slides:
        count = slide.spec.rows * slide.spec.cols
        assert np.array_equal(slide.labels > 0, slide.mask)
        ids = np.unique(slide.labels)
        ids = ids[ids > 0]
        assert ids.min() >= 1 and ids.max() <= count
        expected = np.zeros(count, bool)
        expected[ids.astype(int) - 1] = True
        assert np.array_equal(slide.present, expected)
        assert slide.present.any()


def test_ids_follow_row_major_grid_order() -> None:
    slide = generate_slide(plain_spec(), 0)
    cols = slide.spec.cols
    for mark_id in range(1, slide.spec.rows * cols + 1):
        ys, xs = np.nonzero(slide.labels == mark_id)
        row, col = divmod(mark_id - 1, cols)
        node_y, node_x = slide.nodes[mark_id - 1]
        assert abs(ys.mean() - (38 + 60 * row)) < 15 and abs(xs.mean() - (38 + 60 * col)) < 15
        assert abs(node_y - (38 + 60 * row)) < 1e-6 and abs(node_x - (38 + 60 * col)) < 1e-6


def test_missing_rows_and_columns_are_absent() -> None:
    slide = generate_slide(plain_spec(missing_rows=(1,), missing_cols=(2,)), 0)
    present = slide.present.reshape(4, 4)
    assert not present[1].any()
    assert not present[:, 2].any()
    assert present[[0, 2, 3]][:, [0, 1, 3]].all()
    rows_of_ids = (np.unique(slide.labels[slide.mask]).astype(int) - 1) // 4
    assert 1 not in rows_of_ids


def test_missing_fraction_drops_marks() -> None:
    spec = plain_spec(
        missing_fraction=0.5,
        rows=8,
        cols=8,
        pitch_y=30.0,
        pitch_x=30.0,
        origin_y=20.0,
        origin_x=20.0,
        mark_size=12,
    )
    present = generate_slide(spec, 4).present
    assert 10 < present.sum() < 54


@pytest.mark.parametrize("shape", ["crescent", "chevron", "ellipse", "blob"])
@pytest.mark.parametrize("size", [10, 24, 50])
def test_mark_sizes_follow_the_spec(shape: str, size: int) -> None:
    pitch = 2.5 * size
    rows = cols = 3
    extent = int(pitch * rows + 2 * size)
    spec = plain_spec(
        height=extent,
        width=extent,
        rows=rows,
        cols=cols,
        mark_size=size,
        pitch_y=pitch,
        pitch_x=pitch,
        origin_y=size + 0.5 * pitch,
        origin_x=size + 0.5 * pitch,
        shape=shape,
        size_jitter=0.0,
    )
    slide = generate_slide(spec, 1)
    assert slide.present.all()
    for mark_id in range(1, rows * cols + 1):
        ys, xs = np.nonzero(slide.labels == mark_id)
        span = max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1)
        assert 0.75 * size <= span <= 1.25 * size + 2, (shape, size, mark_id, span)


def test_fragments_share_the_id_of_their_mark() -> None:
    slide = generate_slide(plain_spec(fragment_fraction=1.0, mark_size=30), 2)
    pieces = [
        ndimage.label(slide.labels == mark_id)[1]
        for mark_id in range(1, slide.spec.rows * slide.spec.cols + 1)
    ]
    assert all(count >= 1 for count in pieces)
    assert sum(count >= 2 for count in pieces) >= len(pieces) // 2


def test_touching_marks_are_bridged() -> None:
    # Pitch close to the mark size so neighbours are within bridging distance.
    spec = plain_spec(
        touching_fraction=1.0, mark_size=30, pitch_x=40.0, pitch_y=40.0, shape="ellipse"
    )
    slide = generate_slide(spec, 3)
    _, merged_components = ndimage.label(slide.mask)
    assert merged_components < int(slide.present.sum())


def test_border_marks_are_cut_and_off_image_nodes_absent() -> None:
    spec = plain_spec(origin_y=-10.0, origin_x=-70.0)  # column 0 off-image, row 0 cut
    slide = generate_slide(spec, 0)
    assert not slide.present.reshape(4, 4)[:, 0].any()
    assert slide.nodes[0, 1] < 0
    assert slide.mask[0].any()  # marks of row 0 run into the top border


def test_dark_polarity_marks_are_darker_than_background() -> None:
    for polarity, sign in (("bright", 1), ("dark", -1)):
        slide = generate_slide(plain_spec(polarity=polarity, contrast=0.9), 5)
        image = slide.image.astype(float)
        inner = ndimage.binary_erosion(slide.mask, iterations=2)
        far = ~ndimage.binary_dilation(slide.mask, iterations=6)
        assert sign * (image[inner].mean() - image[far].mean()) > 40


def test_grid_beyond_uint16_ids_is_refused() -> None:
    with pytest.raises(AmsegError, match="65535"):
        random_spec(0, rows=300, cols=300)
    too_big = dataclasses.replace(plain_spec(), rows=256, cols=257)
    with pytest.raises(AmsegError, match="65535"):
        generate_slide(too_big, 0)


def test_unknown_settings_are_refused() -> None:
    with pytest.raises(AmsegError, match="shape"):
        generate_slide(plain_spec(shape="star"), 0)
    with pytest.raises(AmsegError, match="unknown"):
        random_spec(0, colour="red")


def test_random_spec_respects_given_values_and_is_json_ready() -> None:
    for seed in range(20):
        spec = random_spec(seed, height=300, width=400, rows=7, cols=9, mark_size=14, bit_depth=16)
        assert (spec.rows, spec.cols, spec.mark_size, spec.bit_depth) == (7, 9, 14, 16)
        assert (spec.height, spec.width) == (300, 400)
        assert abs(spec.angle_deg) <= 10
        assert spec.shape in ("crescent", "chevron", "ellipse", "blob", "mixed")
        decoded = json.loads(json.dumps(dataclasses.asdict(spec)))
        assert (
            SlideSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in decoded.items()})
            == spec
        )


def test_random_specs_vary(varied_slides: list[SyntheticSlide]) -> None:
    specs = [slide.spec for slide in varied_slides]
    assert len({spec.mark_size for spec in specs}) == len(specs)
    assert len({spec.shape for spec in specs}) >= 2
    assert len({(spec.rows, spec.cols) for spec in specs}) >= 2


def test_dataset_layout(tmp_path) -> None:
    for group, depth in (("g8", 8), ("g16", 16)):
        slide = generate_slide(plain_spec(bit_depth=depth), 1)
        write_dataset_layout(tmp_path, slide, group=group)
        suffix = "png" if depth == 8 else "tiff"
        source = read_image(tmp_path / "source" / group / f"source.{suffix}")
        assert np.array_equal(source, slide.image)
        truth = tmp_path / "ground_truth" / group
        assert np.array_equal(read_image(truth / "labels.png"), slide.labels)
        mask = np.asarray(Image.open(truth / "mask.png"))
        assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
        assert np.array_equal(mask == 255, slide.mask)
        spec = json.loads((truth / "spec.json").read_text())
        assert (spec["rows"], spec["cols"], spec["bit_depth"]) == (4, 4, depth)
    assert sorted(p.name for p in (tmp_path / "source").iterdir()) == ["g16", "g8"]


def test_training_layout_tiles_cover_the_slide(tmp_path) -> None:
    spec = plain_spec(height=700, width=600, rows=10, cols=9)
    slide = generate_slide(spec, 1)
    write_training_layout(tmp_path, slide, split="valid", dataset="syn", group="s0", tile_size=512)
    base = tmp_path / "valid" / "syn" / "s0"
    sources = sorted(p.name for p in (base / "source").glob("*.png"))
    assert sources == ["0000.png", "0001.png", "0002.png", "0003.png"]
    assert sorted(p.name for p in (base / "mask").glob("*.png")) == sources
    last = read_image(base / "source" / "0003.png")
    assert np.array_equal(last, slide.image[700 - 512 :, 600 - 512 :])
    mask = read_image(base / "mask" / "0000.png")
    assert np.array_equal(mask == 255, slide.mask[:512, :512])
    with pytest.raises(AmsegError):
        write_training_layout(tmp_path, slide, split="test", dataset="syn", group="s0")


def test_double_marks_share_the_id_of_their_node() -> None:
    spec = plain_spec(double_cols=(1,), double_offset=0.4, double_angle_deg=90.0, mark_size=20)
    slide = generate_slide(spec, 3)
    doubled = [mark_id for mark_id in range(1, 17) if (mark_id - 1) % 4 == 1]
    pieces = [ndimage.label(slide.labels == mark_id)[1] for mark_id in doubled]
    assert sum(count >= 2 for count in pieces) >= 2
    # Most nodes of the column get a second mark about 0.4 pitch (24 px) below the node.
    below = [
        np.nonzero(slide.labels == mark_id)[0].max() > slide.nodes[mark_id - 1, 0] + 20
        for mark_id in doubled
    ]
    assert sum(below) >= 2
    others = [ndimage.label(slide.labels == mark_id)[1] for mark_id in (1, 3, 4)]
    assert all(count == 1 for count in others)


def test_crescents_are_concave_and_alike() -> None:
    slide = generate_slide(plain_spec(shape="crescent", mark_size=40, shape_jitter=0.05), 2)
    ratios = []
    for mark_id in range(1, 17):
        piece = (slide.labels == mark_id).astype(np.uint8)
        contours, _ = cv2.findContours(piece, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        hull = cv2.convexHull(np.concatenate(contours))
        ratios.append(piece.sum() / max(cv2.contourArea(hull), 1.0))
    assert max(ratios) < 0.75  # a deep notch, not a filled blob
    assert max(ratios) - min(ratios) < 0.2  # marks of one slide look alike


def test_bright_marks_roll_off_below_full_scale() -> None:
    slide = generate_slide(plain_spec(white_level=0.9, contrast=1.0), 4)
    assert int(slide.image.max()) <= round(0.9 * 255)
    inner = ndimage.binary_erosion(slide.mask, iterations=2)
    assert np.median(slide.image[inner]) > 0.75 * 255 * 0.9


def test_random_specs_cover_background_styles() -> None:
    specs = [random_spec(seed, height=64, width=64) for seed in range(60)]
    mottled = [s for s in specs if s.ridge_strength >= 0.5 and s.patch_strength >= 0.6]
    dark = [s for s in specs if s.polarity == "dark"]
    assert len(mottled) >= 8 and len(dark) >= 3
    assert any(s.double_cols or s.double_fraction > 0 for s in specs)


@pytest.mark.parametrize("seed", range(6))
def test_fit_grid_inside_puts_every_node_in_the_image(seed):
    spec = fit_grid_inside(random_spec(seed, height=800, width=700, rows=15, cols=12))
    slide = generate_slide(spec, seed)
    y, x = slide.nodes[:, 0], slide.nodes[:, 1]
    assert y.min() > 0.05 * spec.height and y.max() < 0.95 * spec.height
    assert x.min() > 0.05 * spec.width and x.max() < 0.95 * spec.width
    assert slide.present.sum() > 0.5 * spec.rows * spec.cols


def test_background_fixes_the_matrix_style_and_keeps_seeds_reproducible() -> None:
    # Drawn freely, about a third of slides are mottled (patch strength >= 0.6, ridges >= 0.5);
    # asked for, every one is, and smooth ones never have ridges.
    free = [random_spec(seed) for seed in range(40)]
    assert 0 < sum(spec.ridge_strength >= 0.5 for spec in free) < 40
    mottled = [random_spec(seed, background="mottled") for seed in range(40)]
    assert all(s.patch_strength >= 0.6 and s.ridge_strength >= 0.5 for s in mottled)
    assert all(random_spec(seed, background="smooth").ridge_strength == 0 for seed in range(40))
    assert random_spec(5, background="mottled") == random_spec(5, background="mottled")
    # Where the drawn style already is the asked one, the spec is the same as without it.
    for seed, spec in enumerate(free):
        if spec.ridge_strength >= 0.5:
            assert random_spec(seed, background="mottled") == spec
    with pytest.raises(SynthSpecError, match="background"):
        random_spec(0, background="glossy")


def test_low_contrast_fraction_controls_faint_slides() -> None:
    def faint_share(fraction: float) -> float:
        specs = [random_spec(seed, low_contrast_fraction=fraction) for seed in range(60)]
        return sum(spec.contrast <= 0.4 and spec.background_level >= 0.22 for spec in specs) / 60

    assert faint_share(1.0) == 1.0
    assert faint_share(0.0) == 0.0
    with pytest.raises(SynthSpecError):
        random_spec(0, low_contrast_fraction=1.5)
