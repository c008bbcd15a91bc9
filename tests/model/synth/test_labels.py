"""Tests of the truth of a synthetic slide: ids in grid order, missing marks, mark sizes and
shapes, fragments, bridges, double marks, marks cut by the border, ghosts kept out."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest
from scipy import ndimage

from model.synth.slide import generate_slide
from tests.model.synth.slides import plain_spec


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


def test_ghosts_show_in_the_image_but_are_left_out_of_the_truth() -> None:
    # A ghost beside every mark, 0.6 mark sizes (14 px) to its right, half as opaque.
    plain = plain_spec(mark_size=24)
    ghosted = dataclasses.replace(
        plain, ghost_fraction=1.0, ghost_offset=0.6, ghost_angle_deg=0.0, ghost_brightness=0.5
    )
    first, second = generate_slide(plain, 6), generate_slide(ghosted, 6)
    assert np.array_equal(first.labels, second.labels)
    assert np.array_equal(first.mask, second.mask)
    assert np.array_equal(first.present, second.present)
    brighter = second.image.astype(int) - first.image.astype(int) > 20
    # Nothing else changed: the brighter pixels are the ghosts, beside the marks, not on them
    # (but for the soft edge, which spills a pixel or two of a ghost onto its mark's border).
    assert brighter.sum() > 16 * 20
    inside = ndimage.binary_erosion(first.mask, iterations=2)
    assert (brighter & inside).sum() < 0.01 * brighter.sum()
    xs = np.nonzero(brighter)[1]
    right_of_node = (xs - 38) % 60
    assert 5 < np.median(right_of_node) < 30  # on the side the ghosts were asked for
