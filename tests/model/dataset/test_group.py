"""segment_image and the per-group dataset pipeline."""

import json

import numpy as np
import pytest

from model.dataset.group import GridSpec, process_group
from model.dataset.layout import DatasetLayout
from model.errors import DatasetError
from model.image.io import read_image, write_png, write_tiff
from model.metrics import dice, mark_id_accuracy
from model.segment.pitch import SMALL_MARK_SCALE
from model.segment.segmenter import ClassicalSegmenter
from model.segment.single_pass import PROBABILITY_DTYPE, SegmentOptions, segment_image
from tests.model.scenes import SmallMarkBlindSegmenter, disc_grid_scene

SMALL_TILES = SegmentOptions(tile_size=128, overlap=32, scale=1.0)


def test_classical_segmentation_finds_the_marks():
    image, labels = disc_grid_scene()
    result = segment_image(image, ClassicalSegmenter(), SMALL_TILES)
    assert result.mask.shape == image.shape
    assert result.probabilities.dtype == PROBABILITY_DTYPE
    assert result.probabilities.min() >= 0.0 and result.probabilities.max() <= 1.0
    assert dice(result.mask, labels > 0) > 0.85


def test_sixteen_bit_and_rgb_inputs_give_the_same_marks():
    image, _ = disc_grid_scene(seed=1)
    base = segment_image(image, ClassicalSegmenter(), SMALL_TILES).mask
    twelve_bit = image.astype(np.uint16) * 16 + 7  # 12-bit camera range with an offset
    rgb = np.repeat(image[..., None], 3, axis=2)
    for variant in (twelve_bit, rgb):
        assert dice(segment_image(variant, ClassicalSegmenter(), SMALL_TILES).mask, base) > 0.99


def test_threshold_option_overrides_the_segmenter():
    image, _ = disc_grid_scene(seed=2)
    loose = segment_image(image, ClassicalSegmenter(), SegmentOptions(128, 32, threshold=0.1))
    strict = segment_image(image, ClassicalSegmenter(), SegmentOptions(128, 32, threshold=0.9))
    assert loose.threshold == 0.1
    assert loose.mask.sum() > strict.mask.sum()


def test_tiny_specks_are_removed():
    image = np.full((200, 200), 50, np.uint8)
    image[100, 100] = 255  # a single hot pixel is not a mark
    result = segment_image(image, ClassicalSegmenter(), SegmentOptions(128, 32, min_mark_area=12))
    assert not result.mask.any()


def _dataset(tmp_path, image, group="g1", suffix=".png"):
    folder = tmp_path / "ds" / "source" / group
    folder.mkdir(parents=True)
    (write_png if suffix == ".png" else write_tiff)(folder / f"slide{suffix}", image)
    return DatasetLayout(tmp_path / "ds")


def test_process_group_writes_the_whole_layout(tmp_path):
    image, labels = disc_grid_scene(rows=5, cols=6, missing=((2, 3),))
    image16 = image.astype(np.uint16) * 200
    layout = _dataset(tmp_path, image16, suffix=".tiff")
    stale = layout.tiles_dir("g1") / "source" / "9999.png"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")

    report = process_group(layout, "g1", ClassicalSegmenter(), SMALL_TILES, GridSpec(5, 6))

    assert report.ok
    norm = read_image(layout.source_norm_dir("g1") / "source.tiff")
    assert norm.dtype == np.uint8
    assert norm.shape == image.shape
    norm_info = json.loads((layout.source_norm_dir("g1") / "normalization.json").read_text())
    assert norm_info["dtype"] == "uint16"
    meta = json.loads((layout.tiles_dir("g1") / "meta.json").read_text())
    n_tiles = meta["tile"]["rows"] * meta["tile"]["cols"]
    assert len(list((layout.tiles_dir("g1") / "source").glob("*.png"))) == n_tiles
    assert len(list((layout.tiles_dir("g1") / "mask").glob("*.png"))) == n_tiles
    assert not stale.exists()
    assert meta["orig_image"] == {"h": image.shape[0], "w": image.shape[1]}
    mask = read_image(layout.stitched_dir("g1") / "mask.tiff")
    assert set(np.unique(mask)) <= {0, 255}
    assert dice(mask > 0, labels > 0) > 0.85

    ids = read_image(layout.am_coords_dir("g1") / "am_coordinates.png")
    assert ids.dtype == np.uint16
    assert ids.shape == image.shape
    assert mark_id_accuracy(ids, labels) == 1.0
    assert 2 * 6 + 3 + 1 not in set(np.unique(ids))  # the missing mark's id stays unused
    assert report.qc["missing_ids"] == [2 * 6 + 3 + 1]
    for name in ("ams.csv", "qc.json", "overlay.png"):
        assert (layout.am_coords_dir("g1") / name).is_file()


def test_dataset_errors_are_clear(tmp_path):
    with pytest.raises(DatasetError, match="no such dataset"):
        DatasetLayout(tmp_path / "nope").groups()
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no source/ folder"):
        DatasetLayout(tmp_path / "empty").groups()
    layout = _dataset(tmp_path, np.zeros((10, 10), np.uint8))
    with pytest.raises(DatasetError, match="unknown group"):
        layout.select_groups(["g2"])
    (layout.root / "source" / "g3").mkdir()
    with pytest.raises(DatasetError, match="no TIFF, PNG or JPEG"):
        layout.source_image("g3")


def test_a_padded_slide_gives_the_ids_of_the_unpadded_one(tmp_path):
    """A white border around the sample is cropped off for the network: meta.json says where
    the tiles start, the padding is background, and every mark keeps its id."""
    image, labels = disc_grid_scene(rows=4, cols=5)
    height, width = image.shape
    padded = np.full((height + 150, width + 200), 255, np.uint8)
    padded[50 : 50 + height, 120 : 120 + width] = image
    padded_labels = np.zeros(padded.shape, labels.dtype)
    padded_labels[50 : 50 + height, 120 : 120 + width] = labels
    layout = _dataset(tmp_path, padded)

    report = process_group(layout, "g1", ClassicalSegmenter(), SMALL_TILES, GridSpec(4, 5))

    meta = json.loads((layout.tiles_dir("g1") / "meta.json").read_text())
    assert meta["offset"] == {"y": 50, "x": 120}
    assert meta["image"] == {"h": height, "w": width}  # the tiles cover the sample only
    assert meta["orig_image"] == {"h": padded.shape[0], "w": padded.shape[1]}
    mask = read_image(report.outputs["mask"]) > 0
    assert mask.sum() == mask[50 : 50 + height, 120 : 120 + width].sum()
    ids = read_image(layout.am_coords_dir("g1") / "am_coordinates.png")
    assert mark_id_accuracy(ids, padded_labels) == 1.0
    norm_info = json.loads((layout.source_norm_dir("g1") / "normalization.json").read_text())
    assert norm_info["clip"][1] < 255  # the window is the sample's, not the padding's


@pytest.mark.parametrize("scale", [0.5, 1.5])
def test_process_group_can_segment_a_resampled_image(tmp_path, scale):
    image, labels = disc_grid_scene(rows=4, cols=5)
    layout = _dataset(tmp_path, image)
    options = SegmentOptions(tile_size=128, overlap=32, scale=scale)

    report = process_group(layout, "g1", ClassicalSegmenter(), options, GridSpec(4, 5))

    meta = json.loads((layout.tiles_dir("g1") / "meta.json").read_text())
    assert meta["scale"] == scale
    assert meta["image"] == {"h": round(image.shape[0] * scale), "w": round(image.shape[1] * scale)}
    assert meta["orig_image"] == {"h": image.shape[0], "w": image.shape[1]}
    first_tile = read_image(layout.tiles_dir("g1") / "source" / "0000.png")
    assert first_tile.shape == (128, 128)
    mask = read_image(report.outputs["mask"])
    assert mask.shape == image.shape  # back at full resolution
    assert dice(mask > 0, labels > 0) > 0.8
    ids = read_image(layout.am_coords_dir("g1") / "am_coordinates.png")
    assert mark_id_accuracy(ids, labels) == 1.0


def test_process_group_keeps_only_the_tiles_of_the_pass_it_used(tmp_path):
    """A second, enlarged pass (marks too small for the segmenter) replaces the first's tiles."""
    image, labels = disc_grid_scene(rows=8, cols=9, pitch=36, radius=7)
    layout = _dataset(tmp_path, image)
    options = SegmentOptions(tile_size=128, overlap=32, scale=None)

    report = process_group(layout, "g1", SmallMarkBlindSegmenter(), options, GridSpec(8, 9))

    meta = json.loads((layout.tiles_dir("g1") / "meta.json").read_text())
    assert meta["scale"] == report.scale == 1.5
    assert meta["image"] == {"h": round(image.shape[0] * 1.5), "w": round(image.shape[1] * 1.5)}
    planned = meta["tile"]["rows"] * meta["tile"]["cols"]
    for kind in ("source", "mask"):
        assert len(list((layout.tiles_dir("g1") / kind).iterdir())) == planned
    tile_masks = [read_image(p) for p in (layout.tiles_dir("g1") / "mask").iterdir()]
    assert any(m.any() for m in tile_masks)  # the second pass's tiles, which see the marks
    assert dice(read_image(report.outputs["mask"]) > 0, labels > 0) > 0.9
    ids = read_image(layout.am_coords_dir("g1") / "am_coordinates.png")
    assert mark_id_accuracy(ids, labels) > 0.95


def test_process_group_keeps_the_first_pass_tiles_when_the_second_finds_no_more(
    tmp_path, monkeypatch
):
    from model.segment import predict

    monkeypatch.setattr(predict, "MISSED_GRID_MASK_FRACTION", 1.0)  # always look twice
    image, _ = disc_grid_scene(rows=8, cols=9, pitch=36, radius=7)
    layout = _dataset(tmp_path, image)
    options = SegmentOptions(tile_size=128, overlap=32, scale=None)

    process_group(layout, "g1", ClassicalSegmenter(), options, GridSpec(8, 9))

    meta = json.loads((layout.tiles_dir("g1") / "meta.json").read_text())
    assert meta["scale"] == 1.0
    assert meta["image"] == {"h": image.shape[0], "w": image.shape[1]}
    planned = meta["tile"]["rows"] * meta["tile"]["cols"]
    assert len(list((layout.tiles_dir("g1") / "source").iterdir())) == planned
    assert sorted(p.name for p in layout.tiles_dir("g1").parent.iterdir()) == ["g1"]


def test_a_failed_segmentation_leaves_no_half_written_tiles(tmp_path):
    class FailsOnSecondBatch(ClassicalSegmenter):
        calls = 0

        def predict_batch(self, tiles):
            FailsOnSecondBatch.calls += 1
            if FailsOnSecondBatch.calls == 2:
                raise RuntimeError("out of memory")
            return super().predict_batch(tiles)

    image, _ = disc_grid_scene(rows=8, cols=9, pitch=36, radius=7)
    layout = _dataset(tmp_path, image)
    options = SegmentOptions(tile_size=128, overlap=32, batch_size=2, scale=1.0)

    with pytest.raises(RuntimeError, match="out of memory"):
        process_group(layout, "g1", FailsOnSecondBatch(), options)

    tiles_root = layout.tiles_dir("g1").parent
    assert not tiles_root.exists() or list(tiles_root.iterdir()) == []


def test_earlier_tiles_and_left_over_pass_folders_are_replaced(tmp_path):
    image, _ = disc_grid_scene(rows=8, cols=9, pitch=36, radius=7)
    layout = _dataset(tmp_path, image)
    tiles_root = layout.tiles_dir("g1").parent
    (layout.tiles_dir("g1") / "source").mkdir(parents=True)
    (layout.tiles_dir("g1") / "source" / "9999.png").write_bytes(b"stale")
    (tiles_root / ".g1.pass1" / "source").mkdir(parents=True)  # from a killed run

    process_group(layout, "g1", ClassicalSegmenter(), SegmentOptions(128, 32, scale=None))

    assert sorted(p.name for p in tiles_root.iterdir()) == ["g1"]
    assert not (layout.tiles_dir("g1") / "source" / "9999.png").exists()


def test_process_group_with_the_accurate_policy_records_what_ran(tmp_path):
    """--accurate enlarges a small-mark grid in one pass; meta.json records that pass and the
    batch size the segmenter's runtime asked for, not the CPU default."""
    from model.segment.runtime import Runtime

    class OnGpu(ClassicalSegmenter):
        runtime = Runtime("cuda", "torch", "fp16", threads=2, batch_size=16)

    image, labels = disc_grid_scene(rows=8, cols=9, pitch=36, radius=7)
    layout = _dataset(tmp_path, image)
    options = SegmentOptions(tile_size=128, overlap=32, scale=None, accurate=True)

    report = process_group(layout, "g1", OnGpu(), options, GridSpec(8, 9))

    meta = json.loads((layout.tiles_dir("g1") / "meta.json").read_text())
    assert meta["scale"] == report.scale == SMALL_MARK_SCALE
    assert meta["options"]["accurate"] is True
    assert meta["options"]["batch_size"] == 16
    ids = read_image(layout.am_coords_dir("g1") / "am_coordinates.png")
    assert mark_id_accuracy(ids, labels) > 0.95
