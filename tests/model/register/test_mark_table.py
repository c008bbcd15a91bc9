"""The viewer's mark table, from a segmentation's marks CSV: marks, missing nodes (inside the
image or not) and extra objects."""

import numpy as np
import pytest

from model.register.mark_table import extra_objects, marks_record, missing_nodes, read_ams_csv

AMS = """id,row,col,x,y,area,bbox_x0,bbox_y0,bbox_x1,bbox_y1
1,0,0,10.00,20.00,30,5,15,15,25
2,0,1,30.00,20.00,31,25,15,35,25
5,1,1,30.00,40.00,29,25,35,35,45
"""


def test_the_mark_table_and_where_missing_nodes_are() -> None:
    marks = read_ams_csv(AMS)
    assert marks[0] == {
        "id": 1, "row": 0, "col": 0, "x": 10.0, "y": 20.0, "area": 30, "bbox": [5, 15, 15, 25],
    }  # fmt: skip
    nodes = missing_nodes(marks, [3, 4], cols=3, shape=(60, 60))
    assert nodes == [
        {"id": 3, "row": 0, "col": 2, "x": 50.0, "y": 20.0, "inside": True},
        {"id": 4, "row": 1, "col": 0, "x": 10.0, "y": 40.0, "inside": True},
    ]
    # On a 45 x 30 px image node 3 lies right of it and node 4 below it: the grid is larger.
    off = missing_nodes(marks, [3, 4], cols=3, shape=(30, 45))
    assert [node["inside"] for node in off] == [False, False]
    assert missing_nodes(marks[:2], [3], cols=3, shape=(60, 60)) == [
        {"id": 3, "row": 0, "col": 2, "x": None, "y": None, "inside": None}
    ]


def test_extra_objects_are_mask_components_without_an_id() -> None:
    mask = np.zeros((100, 120), dtype=np.uint8)
    labels = np.zeros((100, 120), dtype=np.uint16)
    mask[10:20, 10:20] = 255
    labels[10:20, 10:20] = 7  # registered
    mask[50:60, 70:90] = 255  # not registered: extra
    mask[90, 5] = 255  # a speck
    extra, total = extra_objects(mask, labels)
    assert total == 1
    assert extra == [{"x": 79.5, "y": 54.5, "area": 200, "bbox": [70, 50, 90, 60]}]


def test_extra_objects_on_large_masks_are_found_on_a_reduced_copy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("model.register.mark_table.EXTRA_SEARCH_PIXELS", 100 * 100)
    mask = np.zeros((400, 400), dtype=np.uint8)
    mask[100:140, 200:260] = 255
    extra, total = extra_objects(mask, np.zeros(mask.shape, np.uint16))
    assert total == 1
    assert extra[0]["bbox"] == [200, 100, 260, 140]
    assert extra[0]["area"] == 40 * 60
    assert extra[0]["x"] == pytest.approx(229.5, abs=2)


def test_marks_record_counts() -> None:
    mask = np.zeros((60, 60), dtype=np.uint8)
    record = marks_record(
        AMS, {"rows": 2, "cols": 3, "missing_ids": [3, 4, 6]}, mask, mask.astype(np.uint16)
    )
    assert (record["expected"], record["found"]) == (6, 3)
    assert [node["id"] for node in record["missing"]] == [3, 4, 6]
    assert record["extra"] == [] and record["extra_total"] == 0
