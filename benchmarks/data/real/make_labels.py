"""First guesses of the development labels (a person then checked and edited every mark).

    pip install scikit-image   # only this script needs it
    python benchmarks/data/real/make_labels.py [--out benchmarks/data/real] [--review /tmp/review]

For each crop: mark seeds (smooth, bright cores), background seeds (far from every core), a
watershed on the gradient puts each boundary on its edge (the outer outline). The inner part
leaves out the rim the eye cannot assign (bright rims of the flat marks, faint crescent tails):
outer minus inner is 128, "cannot tell". Then the hand edits in EDITS (polygons in pixel
coordinates, set to 0, 128 or 255) from reviewing every mark at 4x (--review writes the views).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import watershed

HERE = Path(__file__).resolve().parent
REAL = HERE.parents[2].parent / "shared" / "data" / "real"


@dataclass(frozen=True)
class Recipe:
    core_low: float  # smoothed intensity of mark cores
    core_high: float
    core_std: float  # local (5x5) standard deviation below this: smooth, not texture
    core_area: int  # px, smaller cores are texture
    reach: int  # px from a core beyond which everything is background
    sure_below: float  # inner part: outer pixels darker than this (rims are brighter) ...
    sure_above: float  # ... and brighter than this (faint tails are darker)
    tail_low: float = 255.0  # outer marks grow this far into pixels brighter than tail_low ...
    tail_px: int = 0  # ... as "cannot tell" (the fading tails of crescents)
    tail_dx: int = 0  # tails also reach this far (x, y) down-right along their streak
    tail_dy: int = 0


RECIPES = {
    "notebook_crop": Recipe(168, 222, 12, 80, 8, 214, 150, tail_low=200, tail_px=6),
    "source_small": Recipe(
        170, 256, 40, 25, 7, 256, 120, tail_low=100, tail_px=6, tail_dx=24, tail_dy=10
    ),
    "tile_013": Recipe(
        185, 256, 40, 40, 7, 256, 160, tail_low=150, tail_px=6, tail_dx=16, tail_dy=7
    ),
}

# Hand edits after reviewing every mark at 4x: (crop, value, polygon [(x, y), ...]).
EDITS: list[tuple[str, int, list[tuple[int, int]]]] = [
    # crescent tails of the row above / the column left of the crop, cut by its border
    ("tile_013", 128, [(148, 0), (178, 0), (178, 14), (148, 14)]),
    ("tile_013", 128, [(208, 0), (242, 0), (242, 18), (208, 18)]),
    ("tile_013", 128, [(0, 182), (16, 182), (16, 198), (0, 198)]),
    ("tile_013", 128, [(0, 206), (20, 206), (20, 224), (0, 224)]),
    # bright rim pieces ("ears") beside a mark: rim or plateau, the eye cannot tell
    ("notebook_crop", 128, [(46, 14), (56, 14), (56, 24), (46, 24)]),
    ("notebook_crop", 128, [(148, 82), (170, 82), (170, 104), (148, 104)]),
    ("notebook_crop", 128, [(232, 84), (254, 84), (254, 106), (232, 106)]),
    ("notebook_crop", 128, [(320, 358), (350, 358), (350, 380), (320, 380)]),
    ("notebook_crop", 128, [(322, 514), (342, 514), (342, 527), (322, 527)]),
]
# Marks the first guess cut short (a core split by a dim waist): redrawn by threshold inside a
# box, (crop, (x0, y0, x1, y1), mark above, cannot tell above).
REDRAWN: list[tuple[str, tuple[int, int, int, int], float, float]] = [
    ("source_small", (316, 306, 358, 342), 150, 110),
]
SPECK_PX = 20  # marks smaller than this are noise of the first guess: cannot tell


def first_guess(gray: np.ndarray, recipe: Recipe) -> tuple[np.ndarray, np.ndarray]:
    """Outer outline (watershed, grown along faint tails) and the inner sure part of every
    mark, as bool masks."""
    image = gray.astype(np.float32)
    smooth = cv2.GaussianBlur(image, (0, 0), 1.0)
    mean = cv2.blur(image, (5, 5))
    std = np.sqrt(np.maximum(cv2.blur(image * image, (5, 5)) - mean**2, 0))
    core = (smooth > recipe.core_low) & (smooth < recipe.core_high) & (std < recipe.core_std)
    core = ndi.binary_opening(core, np.ones((3, 3), bool))
    labels, count = ndi.label(core)
    areas = ndi.sum(core, labels, range(1, count + 1))
    core = np.isin(labels, 1 + np.flatnonzero(areas >= recipe.core_area))
    seeds = np.where(core, 2, np.where(ndi.binary_dilation(core, iterations=recipe.reach), 0, 1))
    gradient = np.hypot(cv2.Sobel(smooth, cv2.CV_32F, 1, 0), cv2.Sobel(smooth, cv2.CV_32F, 0, 1))
    outline = ndi.binary_fill_holes(watershed(gradient, seeds.astype(np.int32)) == 2)
    sure = outline & (smooth < recipe.sure_below) & (smooth > recipe.sure_above)
    inner = ndi.binary_erosion(ndi.binary_opening(sure, np.ones((3, 3), bool)))
    outer = outline
    if recipe.tail_px:
        faint = smooth > recipe.tail_low
        outer = ndi.binary_dilation(outline, iterations=recipe.tail_px, mask=faint) | outline
    if recipe.tail_dx:
        streak = np.zeros((2 * recipe.tail_dy + 1, 2 * recipe.tail_dx + 1), np.uint8)
        centre = (recipe.tail_dx, recipe.tail_dy)
        cv2.line(streak, centre, (0, 0), 1, 2)  # cv2.dilate looks up-left: marks reach down-right
        along = cv2.dilate(outline.astype(np.uint8), streak).astype(bool)
        outer |= along & (smooth > recipe.tail_low)
    return outer, inner


def labels_of(name: str) -> np.ndarray:
    gray = cv2.imread(str(REAL / f"{name}.png"), cv2.IMREAD_GRAYSCALE)
    outer, inner = first_guess(gray, RECIPES[name])
    labels = np.where(inner, 255, np.where(outer, 128, 0)).astype(np.uint8)
    specks, count = ndi.label(labels == 255)
    small = 1 + np.flatnonzero(ndi.sum(labels == 255, specks, range(1, count + 1)) < SPECK_PX)
    labels[np.isin(specks, small)] = 128
    smooth = cv2.GaussianBlur(gray.astype(np.float32), (0, 0), 1.0)
    for crop, (x0, y0, x1, y1), mark, unsure in REDRAWN:
        if crop == name:
            box = smooth[y0:y1, x0:x1]
            labels[y0:y1, x0:x1] = np.where(box > mark, 255, np.where(box > unsure, 128, 0))
    for crop, value, polygon in EDITS:
        if crop == name:
            cv2.fillPoly(labels, [np.array(polygon, np.int32)], int(value))
    return labels


def review(gray: np.ndarray, labels: np.ndarray, path: Path, zoom: int = 4) -> None:
    """The labels over the crop at `zoom`, in 256 px quarters: red = mark outline, blue tint =
    cannot tell, yellow coordinates every 16/32 px."""
    height, width = gray.shape
    for y0 in range(0, height, 256):
        for x0 in range(0, width, 256):
            part = (slice(y0, y0 + 256), slice(x0, x0 + 256))
            big = cv2.resize(gray[part], None, fx=zoom, fy=zoom, interpolation=cv2.INTER_NEAREST)
            rgb = np.dstack([big] * 3)
            values = cv2.resize(labels[part], None, fx=zoom, fy=zoom,
                                interpolation=cv2.INTER_NEAREST)  # fmt: skip
            mark = (values > 0).astype(np.uint8)
            edge = mark.astype(bool) & ~cv2.erode(mark, np.ones((3, 3), np.uint8)).astype(bool)
            unsure = values == 128
            rgb[unsure] = (0.6 * rgb[unsure] + (100, 40, 0)).astype(np.uint8)
            rgb[edge] = (0, 0, 255)
            for t in range(0, part[0].stop - y0, 16):
                cv2.putText(rgb, str(y0 + t), (1, t * zoom + 10), cv2.FONT_HERSHEY_PLAIN, 0.7,
                            (0, 255, 255), 1)  # fmt: skip
            for t in range(0, part[1].stop - x0, 32):
                cv2.putText(rgb, str(x0 + t), (t * zoom + 1, 10), cv2.FONT_HERSHEY_PLAIN, 0.7,
                            (0, 255, 255), 1)  # fmt: skip
            cv2.imwrite(str(path / f"{y0}_{x0}.png"), rgb)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--review", type=Path, default=None)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name in RECIPES:
        labels = labels_of(name)
        cv2.imwrite(str(args.out / f"{name}_labels.png"), labels)
        share = {v: float(np.mean(labels == v)) for v in (0, 128, 255)}
        print(name, {k: round(v, 3) for k, v in share.items()})
        if args.review is not None:
            folder = args.review / name
            folder.mkdir(parents=True, exist_ok=True)
            gray = cv2.imread(str(REAL / f"{name}.png"), cv2.IMREAD_GRAYSCALE)
            review(gray, labels, folder)


if __name__ == "__main__":
    main()
