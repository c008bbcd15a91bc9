"""One dataset group end to end: read the source, segment it, register the marks, and write
the old on-disk layout around it (see `model.dataset.layout`)."""

from __future__ import annotations

import glob
import json
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from model.dataset.layout import DatasetLayout
from model.image.io import read_image, to_grayscale, write_png, write_tiff
from model.image.normalize import IntensityWindow, intensity_window, to_uint8
from model.register.records import check_grid_fits
from model.register.request import GridRequest, register_into
from model.segment.predict import options_for, predict_image
from model.segment.segmenter import Segmenter
from model.segment.single_pass import Segmentation, SegmentOptions
from model.segment.tiles import Tile


def normalized_uint8(image: np.ndarray, window: IntensityWindow) -> np.ndarray:
    """The gray image mapped through `window` to uint8, without a float copy for 8/16-bit data."""
    gray = to_grayscale(image)
    if gray.dtype in (np.uint8, np.uint16):
        return to_uint8(window.lookup_table(gray.dtype))[gray]
    return to_uint8(window.apply(gray))


@dataclass
class GroupReport:
    """What happened to one dataset group."""

    group: str
    ok: bool
    error: str | None = None
    outputs: dict[str, str] = field(default_factory=dict)
    marks_found: int | None = None
    qc: dict | None = None
    scale: float | None = None  # the network saw the image resampled by this factor


# The grid to number a group's marks on (rows, cols), with what to join and export.
GridSpec = GridRequest


def process_group(
    layout: DatasetLayout,
    group: str,
    segmenter: Segmenter,
    options: SegmentOptions = SegmentOptions(),
    grid: GridSpec | None = None,
    *,
    write_tiles: bool = True,
    on_stage: Callable[[str], None] | None = None,
    on_tiles_planned: Callable[[int], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> GroupReport:
    """Run source → source_norm → tiles → tiles_stitched → am_coords for one group.

    Earlier outputs of the group are replaced. Registration runs when `grid` is given.
    Errors propagate to the caller, which decides how to report them.
    """

    def stage(name: str) -> None:
        if on_stage is not None:
            on_stage(name)

    stage("normalize")
    gray, window = _normalize_source(layout, group, options)
    if grid is not None:  # before segmenting: a grid the image cannot hold fails at once
        check_grid_fits(*grid.grid(), width=gray.shape[1], height=gray.shape[0])

    stage("segment")
    options = options_for(segmenter, options)  # so that meta.json records what ran
    tiles_dir = layout.tiles_dir(group)
    segmentation = _segment_into_tiles(
        tiles_dir,
        gray,
        segmenter,
        options,
        write_tiles=write_tiles,
        on_tiles_planned=on_tiles_planned,
        on_progress=on_progress,
    )
    _write_tiles_meta(tiles_dir, gray.shape, segmentation, segmenter, options)
    # The uint8 copy is made again (a lookup, ~0.2 s for 100 MP) rather than kept through the
    # segmentation, and the source is let go: a 20000² slide then stays within 4 GB.
    normalized = normalized_uint8(gray, window)
    del gray

    stage("stitch")
    report = _write_stitched(layout, group, normalized, segmentation)

    if grid is not None:
        stage("register")
        _register_group(layout, group, segmentation.mask, normalized, grid, report)
    return report


def _normalize_source(
    layout: DatasetLayout, group: str, options: SegmentOptions
) -> tuple[np.ndarray, IntensityWindow]:
    """Read the group's source image, write source_norm/<group>/ (the uint8 image and how it
    was normalized) and return the gray image and its intensity window."""
    source_path = layout.source_image(group)
    image = read_image(source_path)
    gray = to_grayscale(image)
    window = intensity_window(gray, options.low_percentile, options.high_percentile)
    norm_dir = _fresh_dir(layout.source_norm_dir(group))
    normalized = normalized_uint8(gray, window)
    write_tiff(norm_dir / "source.tiff", normalized)
    (norm_dir / "normalization.json").write_text(
        json.dumps(
            {
                "source": str(source_path.relative_to(layout.root)),
                "dtype": str(gray.dtype),
                "percentiles": [options.low_percentile, options.high_percentile],
                "clip": [window.low, window.high],
            },
            indent=2,
        )
    )
    return gray, window


def _segment_into_tiles(
    tiles_dir: Path,
    gray: np.ndarray,
    segmenter: Segmenter,
    options: SegmentOptions,
    *,
    write_tiles: bool,
    on_tiles_planned: Callable[[int], None] | None,
    on_progress: Callable[[int], None] | None,
) -> Segmentation:
    """Segment `gray`, writing the tiles of each network pass (when `write_tiles`) to a folder
    of its own; the pass whose mask is kept becomes `tiles_dir`, the others are removed."""
    # Earlier tiles of the group go first (also pass folders a killed run left behind).
    for stale in (tiles_dir, *tiles_dir.parent.glob(f".{glob.escape(tiles_dir.name)}.pass*")):
        if stale.exists():
            shutil.rmtree(stale)
    threshold = segmenter.threshold if options.threshold is None else options.threshold
    # Each network pass writes its tiles to a folder of its own (a second, enlarged pass may
    # follow, see predict_image); the pass whose mask is kept becomes tiles/<group>/.
    pass_dirs: list[tuple[float, Path]] = []
    try:
        with ThreadPoolExecutor(max_workers=2) as writer:
            pending = []

            def start_pass(pass_scale: float) -> None:
                folder = tiles_dir.with_name(f".{tiles_dir.name}.pass{len(pass_dirs)}")
                pass_dirs.append((pass_scale, _fresh_dir(folder)))

            def save_tile(tile: Tile, pixels: np.ndarray, prediction: np.ndarray) -> None:
                folder, name = pass_dirs[-1][1], f"{tile.index:04d}.png"
                source = to_uint8(pixels)
                pending.append(writer.submit(write_png, folder / "source" / name, source))
                tile_mask = (prediction > threshold).astype(np.uint8) * 255
                pending.append(writer.submit(write_png, folder / "mask" / name, tile_mask))

            segmentation = predict_image(
                gray,
                segmenter,
                options,
                on_tiles_planned=on_tiles_planned,
                on_progress=on_progress,
                on_pass=start_pass,
                on_tile=save_tile if write_tiles else None,
                keep_probabilities=False,
            )
            for future in pending:
                future.result()  # re-raise a failed write here
    except BaseException:
        # The writer threads are done (the pool waited for them): no half-written pass stays.
        for _, folder in pass_dirs:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    kept = [folder for pass_scale, folder in pass_dirs if pass_scale == segmentation.scale][-1]
    for _, folder in pass_dirs:
        if folder != kept:
            shutil.rmtree(folder)
    kept.rename(tiles_dir)
    return segmentation


def _write_tiles_meta(
    tiles_dir: Path,
    shape: tuple[int, int],
    segmentation: Segmentation,
    segmenter: Segmenter,
    options: SegmentOptions,
) -> None:
    """tiles/<group>/meta.json: the tile grid, where the tiles lie in the image, what ran."""
    meta = segmentation.grid.to_dict() | {
        "orig_image": {"h": shape[0], "w": shape[1]},
        "scale": segmentation.scale,  # the tiles are of the image resampled by this factor
        # ... cropped from this corner first (padding around the sample is left out)
        "offset": {"y": segmentation.offset[0], "x": segmentation.offset[1]},
        "segmenter": segmenter.name,
        "threshold": segmentation.threshold,
        "options": asdict(options),
    }
    (tiles_dir / "meta.json").write_text(json.dumps(meta, indent=2))


def _write_stitched(
    layout: DatasetLayout, group: str, normalized: np.ndarray, segmentation: Segmentation
) -> GroupReport:
    """tiles_stitched/<group>/: the whole mask and its overlay on the normalized source."""
    # Imported here: overlays need scipy.spatial, which `amseg predict` (segment_image only)
    # would otherwise load for nothing.
    from model.register.overlay import render_overlay

    stitched_dir = _fresh_dir(layout.stitched_dir(group))
    mask_u8 = segmentation.mask.astype(np.uint8) * 255
    write_tiff(stitched_dir / "mask.tiff", mask_u8)
    write_png(stitched_dir / "overlay.png", render_overlay(normalized, segmentation.mask))
    report = GroupReport(group=group, ok=True, scale=segmentation.scale)
    report.outputs["mask"] = str(stitched_dir / "mask.tiff")
    return report


def _register_group(
    layout: DatasetLayout,
    group: str,
    mask: np.ndarray,
    normalized: np.ndarray,
    grid: GridSpec,
    report: GroupReport,
) -> None:
    """Number the marks of `mask` on `grid`, write am_coords/<group>/ and add it to `report`."""
    coords_dir = _fresh_dir(layout.am_coords_dir(group))
    registration, written = register_into(coords_dir, mask, grid, source=normalized)
    report.outputs.update({name: str(path) for name, path in written.items()})
    report.marks_found = len(registration.marks)
    report.qc = registration.qc


def _fresh_dir(path: Path) -> Path:
    """Empty `path` (stale tiles of an earlier run must not survive) and return it."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path
