"""Writing synthetic slides to disk: training pairs cut into tiles, or an inference dataset
group with its ground truth beside it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from model.image.io import write_png, write_tiff
from model.synth.slide import SyntheticSlide
from model.synth.spec import SlideSpec, SynthSpecError


def _spec_json(spec: SlideSpec) -> str:
    return json.dumps(dataclasses.asdict(spec), indent=2) + "\n"


def write_training_layout(
    root: Path,
    slide: SyntheticSlide,
    *,
    split: str,
    dataset: str,
    group: str,
    tile_size: int | None = 512,
) -> None:
    """Write training pairs: root/<split>/<dataset>/<group>/{source,mask}/NNNN.png.

    The slide is cut into `tile_size` squares (the last row/column of tiles is shifted
    inwards so every tile is full); `tile_size=None` writes the whole slide as 0000.png.
    Sources keep the slide's bit depth; masks are 0/255 uint8.
    """
    if split not in ("train", "valid"):
        raise SynthSpecError(f"split must be 'train' or 'valid', got {split!r}")
    base = Path(root) / split / dataset / group
    height, width = slide.image.shape
    size_y = height if tile_size is None else min(tile_size, height)
    size_x = width if tile_size is None else min(tile_size, width)
    starts_y = _tile_starts(height, size_y)
    starts_x = _tile_starts(width, size_x)
    index = 0
    for y0 in starts_y:
        for x0 in starts_x:
            name = f"{index:04d}.png"
            window = (slice(y0, y0 + size_y), slice(x0, x0 + size_x))
            write_png(base / "source" / name, slide.image[window])
            write_png(base / "mask" / name, slide.mask[window].astype(np.uint8) * 255)
            index += 1


def _tile_starts(length: int, size: int) -> list[int]:
    starts = list(range(0, max(length - size, 0) + 1, size))
    if starts[-1] + size < length:
        starts.append(length - size)
    return starts


def write_dataset_layout(ds_path: Path, slide: SyntheticSlide, *, group: str) -> None:
    """Write an inference dataset group plus ground truth the pipeline never reads.

    ds_path/source/<group>/source.png (source.tiff when 16-bit) and
    ds_path/ground_truth/<group>/{mask.png (0/255), labels.png (uint16), spec.json}.
    """
    ds_path = Path(ds_path)
    source_dir = ds_path / "source" / group
    if slide.image.dtype == np.uint16:
        write_tiff(source_dir / "source.tiff", slide.image)
    else:
        write_png(source_dir / "source.png", slide.image)
    truth = ds_path / "ground_truth" / group
    write_png(truth / "mask.png", slide.mask.astype(np.uint8) * 255)
    write_png(truth / "labels.png", slide.labels)
    (truth / "spec.json").write_text(_spec_json(slide.spec))
