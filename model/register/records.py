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


@dataclass
class Registration:
    """Label image (uint16, 0 = background), the registered marks sorted by id, and QC figures."""

    labels: np.ndarray
    marks: list[MarkRecord]
    qc: dict
