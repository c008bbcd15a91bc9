"""Label-free fine-tuning from the acquisition grid: the model's sure marks at lattice nodes
are marks, the matrix between nodes away from anything predicted is background, the rest is
not labelled; predict -> register -> select -> tune, a few rounds."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
from scipy.spatial import cKDTree

from model.errors import AmsegError
from model.image.io import read_image
from model.segment.card import DEFAULT_MODEL_DIR
from model.train.finetune import (
    FinetuneOptions,
    FinetuneProgress,
    FinetuneResult,
    finetune,
)
from model.train.finetune_labels import BACKGROUND, MARK, UNLABELLED

CONFIDENT_PROBABILITY = 0.75  # mean probability over a mark for it to count as a sure mark
OFF_GRID_DISTANCE = 0.45  # x pitch: a blob this far from every node of the grid is not a mark


@dataclass
class GridLabels:
    """Pseudo-labels from a prediction and the grid: 255 sure marks at their nodes, 0 the
    matrix between nodes away from anything predicted (and blobs off the grid), 128 the rest."""

    labels: np.ndarray  # uint8 (H, W) 0/128/255
    marks: int  # marks registered at a node
    sure_marks: int  # ... of them labelled as marks
    off_grid: int  # predicted blobs inside the grid but off its nodes, labelled background
    pitch_px: float


def _fit_nodes(marks: list, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows * cols, 2) x, y of every node from an affine fit to the registered marks (their
    own centroids where they are), each mark's distance from the fit, and the fit (3, 2):
    origin, column step, row step."""
    grid = np.array([(1.0, m.col, m.row) for m in marks])
    xy = np.array([(m.x, m.y) for m in marks])
    coef, *_ = np.linalg.lstsq(grid, xy, rcond=None)
    rr, cc = np.divmod(np.arange(rows * cols), cols)
    nodes = np.column_stack([np.ones(rows * cols), cc, rr]) @ coef
    residual = np.hypot(*(xy - grid @ coef).T)
    nodes[np.array([m.id - 1 for m in marks])] = xy
    return nodes, residual, coef


def labels_from_grid(
    probabilities: np.ndarray, rows: int, cols: int, threshold: float = 0.45
) -> GridLabels:
    """Pseudo-labels for label-free fine-tuning (see GridLabels): the mask (probabilities >
    threshold) is registered on the rows x cols grid; a registered mark is sure when its mean
    probability is CONFIDENT_PROBABILITY or more, its area 0.5-2x the median and it sits
    within a quarter pitch of the fitted lattice; its pixels, holes filled, but a thin rim
    become 255.
    Background is what lies farther than a mark's reach from every node and from every
    registered mark, and away from faint blobs (probability > 0.2) near a node; predicted
    blobs off the nodes inside the grid are background too. Everything else (rims, unsure
    marks, empty nodes, faint blobs near nodes) stays 128."""
    from model.register.registration import register_marks
    from model.segment.single_pass import remove_small_components

    mask = remove_small_components(probabilities > threshold, 12)
    registration = register_marks(mask, rows, cols)
    marks = registration.marks
    nodes, residual, coef = _fit_nodes(marks, rows, cols)
    pitch = float(min(np.hypot(*coef[1]), np.hypot(*coef[2])))
    areas = np.array([m.area for m in marks], np.float64)
    diameter = 2.0 * math.sqrt(float(np.median(areas)) / math.pi)
    rim = max(1, round(0.08 * diameter))
    labels = np.full(mask.shape, UNLABELLED, np.uint8)

    near_node = _near_points(mask.shape, nodes, 0.65 * diameter + 2.0 * rim + 2.0)
    near_node |= cv2.dilate((registration.labels > 0).astype(np.uint8), _disc(rim + 2)) > 0
    # Faint blobs (probability over 0.2) are left alone near a node only: off the nodes the
    # grid says they are matrix, which is what the base model most needs to learn there.
    maybe_mark = cv2.dilate((probabilities > 0.2).astype(np.uint8), _disc(rim + 2)) > 0
    maybe_mark &= _near_points(mask.shape, nodes, OFF_GRID_DISTANCE * pitch)
    labels[~near_node & ~maybe_mark] = BACKGROUND
    off_grid = _label_off_grid(
        labels, mask, registration.labels, nodes, coef, rows, cols, pitch, rim
    )
    sure = 0
    kernel = _disc(rim)
    for mark, distance in zip(marks, residual, strict=True):
        x0, y0, x1, y1 = mark.bbox
        own = registration.labels[y0:y1, x0:x1] == mark.id
        confident = probabilities[y0:y1, x0:x1][own].mean() >= CONFIDENT_PROBABILITY
        sized = 0.5 * np.median(areas) <= mark.area <= 2.0 * np.median(areas)
        if confident and sized and distance <= 0.25 * pitch:
            solid = fill_holes(own).astype(np.uint8)  # marks are solid: no holes in them
            core = cv2.erode(solid, kernel, borderType=cv2.BORDER_CONSTANT) > 0
            labels[y0:y1, x0:x1][core] = MARK
            sure += 1
    return GridLabels(labels, len(marks), sure, off_grid, pitch)


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """`mask` with every background area that it encloses filled."""
    padded = np.pad(mask.astype(np.uint8), 1)
    outside = padded.copy()
    flood = np.zeros((padded.shape[0] + 2, padded.shape[1] + 2), np.uint8)
    cv2.floodFill(outside, flood, (0, 0), 1)
    return (padded | (outside == 0))[1:-1, 1:-1].astype(bool)


def _disc(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def _near_points(shape: tuple[int, int], points: np.ndarray, radius: float) -> np.ndarray:
    """Pixels within `radius` of any of the (x, y) points."""
    seeds = np.full(shape, 255, np.uint8)
    xy = np.rint(points).astype(np.int64)
    inside = (xy[:, 0] >= 0) & (xy[:, 0] < shape[1]) & (xy[:, 1] >= 0) & (xy[:, 1] < shape[0])
    seeds[xy[inside, 1], xy[inside, 0]] = 0
    near = cv2.distanceTransform(seeds, cv2.DIST_L2, 5) <= radius
    for x, y in xy[~inside]:  # nodes just outside the image still reach into it
        cv2.circle(near.view(np.uint8), (int(x), int(y)), int(radius), 1, -1)
    return near


def _label_off_grid(
    labels: np.ndarray,
    mask: np.ndarray,
    ids: np.ndarray,
    nodes: np.ndarray,
    coef: np.ndarray,
    rows: int,
    cols: int,
    pitch: float,
    rim: int,
) -> int:
    """Predicted blobs without an id, inside the grid and OFF_GRID_DISTANCE pitches from
    every node, become background (with a rim); returns how many."""
    count, components, stats, centroids = cv2.connectedComponentsWithStats(
        mask.astype(np.uint8), connectivity=8
    )
    if count <= 1:
        return 0
    centres = centroids[1:]
    col_row = (centres - coef[0]) @ np.linalg.inv(coef[1:].T).T  # (x, y) -> (col, row)
    inside = (col_row >= -0.5).all(axis=1) & (col_row[:, 0] <= cols - 0.5)
    inside &= col_row[:, 1] <= rows - 0.5
    far = cKDTree(nodes).query(centres)[0] > OFF_GRID_DISTANCE * pitch
    off = 0
    pad = rim + 1
    for k in np.flatnonzero(inside & far) + 1:
        x, y, w, h = stats[k, :4]
        y0, x0 = max(0, y - pad), max(0, x - pad)
        box = (slice(y0, y + h + pad), slice(x0, x + w + pad))
        blob = components[box] == k
        if ids[box][blob].any():
            continue
        grown = cv2.dilate(blob.astype(np.uint8), _disc(pad)) > 0
        labels[box][grown] = BACKGROUND
        off += 1
    return off


@dataclass
class GridRound:
    """One predict -> register -> select -> tune round of the label-free mode."""

    grid: GridLabels
    result: FinetuneResult | None  # None when no time was left to tune


def finetune_from_grid(
    image: np.ndarray | str | Path,
    rows: int,
    cols: int,
    out_dir: str | Path,
    base: str | Path | None = None,
    minutes: float = 5.0,
    rounds: int = 2,
    device: str = "auto",
    seed: int = 0,
    on_progress: Callable[[FinetuneProgress], None] | None = None,
    on_round: Callable[[int, GridLabels], None] | None = None,
    options: FinetuneOptions = FinetuneOptions(),
) -> list[GridRound]:
    """Label-free fine-tuning: predict with the current model, take pseudo-labels from the
    rows x cols grid (`labels_from_grid`), tune on them; `rounds` times, each round from the
    model the one before wrote. `minutes` bounds it all, predictions included."""
    from model.segment.neural import TorchSegmenter
    from model.segment.predict import predict_image
    from model.segment.runtime import RuntimeChoice
    from model.segment.single_pass import SegmentOptions
    from model.segment.tiles import DEFAULT_OVERLAP

    if rounds < 1:
        raise AmsegError(f"rounds must be at least 1, got {rounds}")
    # Pseudo-labels are the model's own guesses: no last pass that would learn their mistakes
    # exactly (synthetic darkfill 960000: 0.837 -> 0.818 with it, 0.908 without).
    options = replace(options, final_fraction=0.0, min_final_steps=0)
    name = str(image) if isinstance(image, str | Path) else "image"
    pixels = read_image(image) if isinstance(image, str | Path) else np.asarray(image)
    deadline = time.perf_counter() + minutes * 60.0
    done: list[GridRound] = []
    model_dir = Path(base) if base is not None else None
    for k in range(rounds):
        runtime = RuntimeChoice(device=device, threads=options.threads)
        segmenter = TorchSegmenter.from_model_dir(model_dir, runtime=runtime)
        tile = segmenter.tile_size
        options_k = SegmentOptions(tile_size=tile, overlap=min(DEFAULT_OVERLAP, tile // 2))
        found = predict_image(pixels, segmenter, options_k)
        grid = labels_from_grid(found.probabilities, rows, cols, segmenter.threshold)
        if on_round is not None:
            on_round(k + 1, grid)
        share = (deadline - time.perf_counter()) / (rounds - k)
        if grid.sure_marks == 0 or share < 10.0:
            done.append(GridRound(grid, None))
            break
        result = finetune(
            [pixels], [grid.labels], out_dir, model_dir, share / 60.0, device, seed + k,
            on_progress, options,
        )  # fmt: skip
        done.append(GridRound(grid, result))
        model_dir = result.out_dir
    _record_grid_rounds(done, name, rows, cols, base)
    return done


def _record_grid_rounds(
    done: list[GridRound], name: str, rows: int, cols: int, base: str | Path | None
) -> None:
    """The last round's card, saying it learnt from the grid, round by round."""
    from model.segment.card import write_card

    tuned = [r.result for r in done if r.result is not None]
    if not tuned:
        return
    last = tuned[-1]
    last.card.training["base"] = str(base or DEFAULT_MODEL_DIR)
    last.card.training["label_free"] = {
        "image": name,
        "grid": [rows, cols],
        "rounds": [
            {
                "marks_at_nodes": r.grid.marks,
                "sure_marks": r.grid.sure_marks,
                "off_grid_background": r.grid.off_grid,
                "held_out_dice_base": r.result and r.result.held_out_dice_base,
                "held_out_dice": r.result and r.result.held_out_dice,
                "seconds": r.result and round(r.result.seconds, 1),
            }
            for r in done
        ],
    }
    write_card(last.out_dir, last.card)
