"""Registration of mark masks onto the acquisition grid, checked id by id against ground truth."""

from __future__ import annotations

import dataclasses
import json

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from model.errors import RegistrationError
from model.register.records import Registration
from model.register.registration import register_marks
from tests.model.grid_masks import GridMask, GridSpec, id_accuracy, make_grid_mask
from tests.model.register.cases import HARD, register_grid


def assert_ids_right(registration: Registration, grid: GridMask) -> None:
    """Every ground-truth mark carries its own id; noise stays background."""
    score = id_accuracy(registration.labels, grid.labels)
    wrong = {i: grid.kinds.get(i) for i in score["wrong_ids"]}
    assert not wrong, f"wrong ids (id: kind): {wrong}"
    assert not registration.labels[grid.noise].any(), "specks or dust received an id"
    assert registration.labels.shape == grid.mask.shape
    assert registration.labels.dtype == np.uint16


@pytest.mark.parametrize("angle", [-12, -10, -5, -2, 0, 3, 7, 10, 12])
def test_every_id_right_under_rotation_with_all_defects(angle: float) -> None:
    grid = make_grid_mask(dataclasses.replace(HARD, angle_deg=angle, seed=100 + angle))
    registration = register_grid(grid)
    assert_ids_right(registration, grid)
    qc = registration.qc
    assert qc["angle_deg"] == pytest.approx(angle, abs=0.3)
    assert qc["pitch_px"] == pytest.approx([27.0, 30.0], rel=0.01)
    assert qc["shear"] == pytest.approx(0.02, abs=0.01)
    assert not qc["ambiguous_anchor"]


def test_missing_interior_row_and_column_do_not_shift_ids() -> None:
    spec = GridSpec(rows=10, cols=11, missing_rows=(4,), missing_cols=(2, 8), angle_deg=4, seed=3)
    grid = make_grid_mask(spec)
    registration = register_grid(grid)
    assert_ids_right(registration, grid)
    missing = set(registration.qc["missing_ids"])
    expected_missing = {
        i * 11 + j + 1 for i in range(10) for j in range(11) if i == 4 or j in (2, 8)
    }
    assert missing == expected_missing
    assert registration.qc["found"] == 110 - len(expected_missing)


@pytest.mark.parametrize("row_shift", [0.15, -0.3, 0.42])
def test_serpentine_rows_shifted_alternately_keep_their_ids(row_shift: float) -> None:
    spec = dataclasses.replace(HARD, row_shift=row_shift, angle_deg=-4, seed=71)
    grid = make_grid_mask(spec)
    registration = register_grid(grid)
    assert_ids_right(registration, grid)
    assert registration.qc["row_shift_px"] == pytest.approx(row_shift * 30.0, abs=1.5)


def test_marks_cut_by_the_image_border_keep_their_ids() -> None:
    grid = make_grid_mask(GridSpec(rows=9, cols=10, margin=0.0, angle_deg=1.5, seed=5))
    # The outermost marks are really cut: some ground-truth marks touch the border.
    edge_ids = set(np.unique(grid.labels[0, :])) | set(np.unique(grid.labels[:, -1]))
    assert len(edge_ids - {0}) >= 5
    assert_ids_right(register_grid(grid), grid)


def test_crescents_whose_centroid_lies_outside_the_mark_keep_their_ids() -> None:
    grid = make_grid_mask(GridSpec(rows=8, cols=9, crescent_fraction=1.0, angle_deg=-6, seed=7))
    outside = 0
    for mark_id in np.unique(grid.labels)[1:]:
        ys, xs = np.nonzero(grid.labels == mark_id)
        outside += not grid.mask[round(ys.mean()), round(xs.mean())]
    assert outside >= 10, "the generator should make crescents with an empty centroid"
    assert_ids_right(register_grid(grid), grid)


def test_touching_pairs_are_split_into_both_ids() -> None:
    spec = GridSpec(rows=8, cols=10, touching_pairs=6, angle_deg=5, seed=11)
    grid = make_grid_mask(spec)
    registration = register_grid(grid)
    assert_ids_right(registration, grid)
    touching = [i for i, kind in grid.kinds.items() if kind == "touching"]
    assert len(touching) == 12
    _, components = cv2.connectedComponents(grid.mask.view(np.uint8), connectivity=8)
    for mark_id in touching:
        pixels = grid.labels == mark_id
        share = np.mean(registration.labels[pixels] == mark_id)
        assert share >= 0.9, f"mark {mark_id}: only {share:.0%} of its pixels carry its id"
    # Each pair really is one connected component in the mask.
    pair_components = {int(np.bincount(components[grid.labels == i]).argmax()) for i in touching}
    assert len(pair_components) == 6
    assert registration.qc["split_components"] == 6


def test_fragments_of_one_mark_share_its_id() -> None:
    grid = make_grid_mask(GridSpec(rows=8, cols=9, fragment_fraction=0.6, radius=0.35, seed=13))
    registration = register_grid(grid)
    assert_ids_right(registration, grid)
    _, components = cv2.connectedComponents(grid.mask.view(np.uint8), connectivity=8)
    fragmented = 0
    for mark_id, kind in grid.kinds.items():
        pixels = grid.labels == mark_id
        if kind != "fragments" or np.unique(components[pixels]).size < 2:
            continue
        fragmented += 1
        assert np.all(registration.labels[pixels] == mark_id), f"mark {mark_id} split into ids"
    assert fragmented >= 10
    assert registration.qc["merged_fragments"] >= fragmented


def test_specks_and_dust_stay_background_and_are_counted() -> None:
    grid = make_grid_mask(GridSpec(rows=8, cols=9, specks=60, dust=8, seed=17))
    registration = register_grid(grid)
    assert_ids_right(registration, grid)
    noise_components = cv2.connectedComponents(grid.noise.view(np.uint8), connectivity=8)[0] - 1
    assert noise_components >= 15
    qc = registration.qc
    # Specks are set aside first; dust blobs (a quarter of a mark) are small objects, not extra.
    assert qc["specks"] > 0 and qc["small_objects"] > 0
    assert qc["specks"] + qc["small_objects"] == noise_components
    assert qc["extra"] == 0
    assert qc["found"] == qc["expected"] == 72 and qc["missing"] == 0


def test_same_input_same_output_whatever_the_mask_encoding() -> None:
    grid = make_grid_mask(dataclasses.replace(HARD, angle_deg=7, seed=23))
    first = register_grid(grid)
    again = register_marks(grid.mask.astype(np.uint8) * 255, 12, 15)
    ones = register_marks(grid.mask.astype(np.uint8), 12, 15)
    floats = register_marks(grid.mask.astype(np.float32), 12, 15)
    for other in (again, ones, floats):
        np.testing.assert_array_equal(first.labels, other.labels)
        assert first.marks == other.marks
        assert first.qc == other.qc


def test_whole_first_row_missing_is_flagged_as_ambiguous() -> None:
    spec = GridSpec(rows=8, cols=9, missing_rows=(0,), seed=29)
    grid = make_grid_mask(spec)
    registration = register_grid(grid)
    qc = registration.qc
    assert qc["ambiguous_anchor"] is True
    assert any("ambiguous" in warning for warning in qc["warnings"])
    assert any("larger than the marked area" in warning for warning in qc["warnings"])
    # Nothing in the marks can tell: they are numbered from the first occupied row.
    present = np.unique(grid.labels)[1:]
    shifted = np.unique(registration.labels)[1:]
    np.testing.assert_array_equal(shifted, present - 9)


def test_whole_last_column_missing_keeps_ids_but_warns() -> None:
    grid = make_grid_mask(GridSpec(rows=8, cols=9, missing_cols=(8,), seed=31))
    registration = register_grid(grid)
    assert_ids_right(registration, grid)
    assert registration.qc["ambiguous_anchor"] is True


def test_complete_grid_has_clean_qc() -> None:
    grid = make_grid_mask(GridSpec(rows=7, cols=8, angle_deg=2, jitter=0.02, seed=37))
    registration = register_grid(grid)
    assert_ids_right(registration, grid)
    qc = registration.qc
    assert qc["warnings"] == []
    assert qc["found"] == qc["expected"] == 56
    assert qc["missing_ids"] == []
    assert qc["ambiguous_anchor"] is False
    assert [m.id for m in registration.marks] == list(range(1, 57))
    mark = registration.marks[9]
    assert (mark.row, mark.col) == (1, 1)
    x0, y0, x1, y1 = mark.bbox
    assert x0 <= mark.x < x1 and y0 <= mark.y < y1
    assert mark.area == int(np.count_nonzero(registration.labels == mark.id))
    json.dumps(qc)  # JSON-serialisable as it is


def test_sparse_grid_with_many_missing_marks() -> None:
    grid = make_grid_mask(GridSpec(rows=10, cols=10, missing_fraction=0.3, angle_deg=-8, seed=41))
    registration = register_grid(grid)
    assert_ids_right(registration, grid)


@pytest.mark.parametrize(("rows", "cols"), [(2, 2), (1, 7), (6, 1), (3, 40)])
def test_small_and_thin_grids(rows: int, cols: int) -> None:
    grid = make_grid_mask(GridSpec(rows=rows, cols=cols, angle_deg=3, seed=43))
    assert_ids_right(register_grid(grid), grid)


def test_errors_for_impossible_grids_and_empty_masks() -> None:
    grid = make_grid_mask(GridSpec(rows=4, cols=4, seed=47))
    height, width = grid.mask.shape
    with pytest.raises(RegistrationError, match=f"more than a {width} x {height} px image can"):
        register_marks(grid.mask, 256, 257)
    with pytest.raises(RegistrationError, match="32-bit label images"):
        register_marks(grid.mask, 70_000, 70_000)
    with pytest.raises(RegistrationError, match="at least 1 row"):
        register_marks(grid.mask, 0, 5)
    with pytest.raises(RegistrationError, match="no foreground"):
        register_marks(np.zeros((50, 60), bool), 4, 4)
    three = np.zeros((60, 60), np.uint8)
    for x in (10, 30, 50):
        cv2.circle(three, (x, 30), 5, 255, -1)
    with pytest.raises(RegistrationError, match="at least 4"):
        register_marks(three, 1, 3)
    with pytest.raises(RegistrationError, match="2-D"):
        register_marks(np.zeros((5, 5, 3), np.uint8), 2, 2)


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
@given(
    angle=st.floats(-10, 10),
    pitch_x=st.floats(22, 45),
    aspect=st.floats(0.85, 1.2),
    shear=st.floats(-0.03, 0.03),
    missing=st.floats(0, 0.1),
    rows=st.integers(5, 14),
    cols=st.integers(5, 14),
    seed=st.integers(0, 2**16),
)
def test_property_random_lattices(angle, pitch_x, aspect, shear, missing, rows, cols, seed) -> None:
    spec = GridSpec(
        rows=rows,
        cols=cols,
        pitch_x=pitch_x,
        pitch_y=pitch_x * aspect,
        angle_deg=angle,
        shear=shear,
        jitter=0.03,
        missing_fraction=missing,
        crescent_fraction=0.1,
        fragment_fraction=0.1,
        touching_pairs=1,
        specks=10,
        seed=seed,
    )
    grid = make_grid_mask(spec)
    if np.unique(grid.labels[:, :]).size - 1 < 4:
        return
    registration = register_grid(grid)
    if registration.qc["ambiguous_anchor"]:
        return  # a whole edge row/column went missing by chance: ids cannot be anchored
    score = id_accuracy(registration.labels, grid.labels)
    assert score["accuracy"] >= 0.995, score


# Strongly anisotropic raster (rows 3x closer than the marks along a row) with odd rows
# shifted by about half a pitch: a diagonal neighbour is nearer than the next mark in the row.
ANISOTROPIC = GridSpec(
    rows=24,
    cols=9,
    pitch_x=96.0,
    pitch_y=33.0,
    radius=0.3,
    jitter=0.02,
    missing_fraction=0.05,
    missing_rows=(9,),
    missing_cols=(4,),
    crescent_fraction=0.2,
    specks=30,
)


@pytest.mark.parametrize(("row_shift", "angle"), [(0.42, -5.0), (0.5, 3.0), (-0.3, 9.0)])
def test_anisotropic_serpentine_raster_keeps_rows_and_columns(
    row_shift: float, angle: float
) -> None:
    spec = dataclasses.replace(ANISOTROPIC, row_shift=row_shift, angle_deg=angle, seed=83)
    grid = make_grid_mask(spec)
    registration = register_grid(grid)
    assert_ids_right(registration, grid)
    qc = registration.qc
    assert qc["angle_deg"] == pytest.approx(angle, abs=0.5)
    assert qc["pitch_px"] == pytest.approx([33.0, 96.0], rel=0.02)
    assert not qc["ambiguous_anchor"]


def test_whole_rows_laid_down_off_their_place_keep_their_ids() -> None:
    spec = dataclasses.replace(HARD, row_jitter=0.12, angle_deg=6, seed=89)
    grid = make_grid_mask(spec)
    assert_ids_right(register_grid(grid), grid)


@pytest.mark.parametrize("offset", [0.42, -0.52, 0.55])
def test_double_marks_join_their_own_node_not_the_neighbour(offset: float) -> None:
    spec = GridSpec(
        rows=14,
        cols=12,
        pitch_x=34.0,
        pitch_y=38.0,
        radius=0.22,
        angle_deg=-4,
        jitter=0.02,
        missing_fraction=0.05,
        double_fraction=0.2,
        double_offset=offset,
        double_scale=0.8,
        specks=20,
        seed=97,
    )
    grid = make_grid_mask(spec)
    _, components = cv2.connectedComponents(grid.mask.view(np.uint8), connectivity=8)
    doubled = [
        i for i in np.unique(grid.labels)[1:] if np.unique(components[grid.labels == i]).size > 1
    ]
    assert len(doubled) >= 15, "the generator should draw separate double marks"
    registration = register_grid(grid)
    assert_ids_right(registration, grid)
    for mark_id in doubled:
        assert np.all(registration.labels[grid.labels == mark_id] == mark_id), mark_id


def test_running_out_of_memory_is_a_registration_error_in_words(monkeypatch) -> None:
    import model.register.registration as registration

    def no_memory(mask):
        raise MemoryError

    monkeypatch.setattr(registration, "find_marks", no_memory)
    grid = make_grid_mask(GridSpec(rows=4, cols=4, seed=47))
    height, width = grid.mask.shape
    with pytest.raises(RegistrationError, match=f"not enough memory .* {width} x {height} px"):
        register_marks(grid.mask, 4, 4)
