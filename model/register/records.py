"""What a registration hands back: the label image, one record per registered mark, QC figures."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_ID = 65535
"""Largest id a uint16 label image can hold, so rows * cols may not exceed it."""


@dataclass(frozen=True)
class MarkRecord:
    """One registered mark: x, y = pixel centroid, bbox = (x0, y0, x1, y1) with x1, y1 exclusive."""

    id: int
    row: int
    col: int
    x: float
    y: float
    area: int
    bbox: tuple[int, int, int, int]


@dataclass(frozen=True)
class KnownNode:
    """A mark whose grid place a person knows: its pixel position (x, y) in the image and its
    row and column (0-based, as in ams.csv). Registration anchors the grid there."""

    x: float
    y: float
    row: int
    col: int


@dataclass
class Registration:
    """Label image (uint16, 0 = background), the registered marks sorted by id, and QC figures."""

    labels: np.ndarray
    marks: list[MarkRecord]
    qc: dict
