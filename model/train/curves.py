"""What a run leaves beside its model: history.json and the training curves (Pillow)."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

HISTORY_FILE = "history.json"
CURVES_FILE = "training_curves.png"

WIDTH, HEIGHT, MARGIN = 1000, 420, 60
PLOT_TOP = 30
Series = list[tuple[str, str, tuple[int, int, int]]]  # (label, history key, colour)
LOSS_SERIES: Series = [
    ("train loss", "train_loss", (31, 119, 180)),
    ("val loss", "val_loss", (255, 127, 14)),
]
METRIC_SERIES: Series = [
    ("val Dice", "val_dice", (44, 160, 44)),
    ("val F1", "val_f1", (214, 39, 40)),
]


def write_history(out: Path, history: list[dict]) -> None:
    """history.json in `out`, replaced atomically: one record per epoch run."""
    tmp = out / f".{HISTORY_FILE}.tmp"
    tmp.write_text(json.dumps(history, indent=2))
    os.replace(tmp, out / HISTORY_FILE)


@dataclass
class _Panel:
    """One plot of the figure, and the map from (epoch, value) to its pixels."""

    left: int
    right: int
    ylabel: str
    x_range: tuple[int, int]
    y_range: tuple[float, float]
    top: int = PLOT_TOP
    bottom: int = HEIGHT - MARGIN

    def to_xy(self, epoch: float, value: float) -> tuple[float, float]:
        (x_low, x_high), (low, high) = self.x_range, self.y_range
        x = self.left + (epoch - x_low) / (x_high - x_low) * (self.right - self.left)
        y = self.bottom - (value - low) / (high - low) * (self.bottom - self.top)
        return x, y


def write_curves(path: Path, history: list[dict]) -> Path:
    """Two panels (losses; validation Dice and F1) per epoch, drawn with Pillow."""
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    epochs = [r["epoch"] for r in history]
    x_range = (min(epochs), max(epochs)) if len(epochs) > 1 else (epochs[0] - 1, epochs[0])
    losses = [r[k] for r in history for k in ("train_loss", "val_loss")]
    metrics = [r[k] for r in history for k in ("val_dice", "val_f1")]
    panel_w = (WIDTH - 3 * MARGIN) // 2
    loss_left, metric_left = MARGIN, 2 * MARGIN + panel_w
    panels = [
        (
            _Panel(
                loss_left, loss_left + panel_w, "loss", x_range, _value_range(losses, 0.0, math.inf)
            ),
            LOSS_SERIES,
        ),
        (
            _Panel(
                metric_left,
                metric_left + panel_w,
                "validation metric",
                x_range,
                _value_range(metrics, 0.0, 1.0),
            ),
            METRIC_SERIES,
        ),
    ]
    for panel, series in panels:
        _draw_axes(draw, panel, font)
        _draw_series(draw, panel, series, history, font)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def _draw_axes(draw: ImageDraw.ImageDraw, panel: _Panel, font: ImageFont.ImageFont) -> None:
    """The value grid with its labels, the epoch ticks, and the frame (over the grid)."""
    left, right, bottom = panel.left, panel.right, panel.bottom
    (x_low, x_high), (y_low, y_high) = panel.x_range, panel.y_range
    for i in range(6):
        value = y_low + (y_high - y_low) * i / 5
        _, y = panel.to_xy(x_low, value)
        draw.line([left - 4, y, left, y], fill="black")
        draw.line([left, y, right, y], fill=(230, 230, 230))
        digits = 2 if y_high - y_low >= 0.1 else 3
        draw.text((left - 44, y - 6), f"{value:.{digits}f}", fill="black", font=font)
    for ep in _epoch_ticks(x_low, x_high):
        x, _ = panel.to_xy(ep, y_low)
        draw.line([x, bottom, x, bottom + 4], fill="black")
        draw.text((x - 6, bottom + 6), str(ep), fill="black", font=font)
    draw.text(((left + right) // 2 - 15, bottom + 22), "epoch", fill="black", font=font)
    draw.text((left, 10), panel.ylabel, fill="black", font=font)
    draw.rectangle([left, panel.top, right, bottom], outline="black")


def _draw_series(
    draw: ImageDraw.ImageDraw,
    panel: _Panel,
    series: Series,
    history: list[dict],
    font: ImageFont.ImageFont,
) -> None:
    """Each series as a line with dots, and its legend entry."""
    for k, (label, key, colour) in enumerate(series):
        points = [panel.to_xy(r["epoch"], r[key]) for r in history]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for x, y in points:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        # Legend in the band above the plot, where it cannot hide a curve.
        legend_x = panel.right - 110 * (len(series) - k)
        draw.line([legend_x, 16, legend_x + 20, 16], fill=colour, width=2)
        draw.text((legend_x + 25, 10), label, fill="black", font=font)


def _value_range(values: list[float], floor: float, ceiling: float) -> tuple[float, float]:
    """The y range of a panel: the data with 10 % padding, within [floor, ceiling], so the small
    changes of a fine-tune stay visible (a fixed 0..1 axis flattens them)."""
    low, high = min(values), max(values)
    pad = max((high - low) * 0.1, 0.005)
    return max(floor, low - pad), min(ceiling, high + pad)


def _epoch_ticks(low: int, high: int) -> list[int]:
    step = max(1, math.ceil((high - low) / 10))
    return list(range(max(low, 1), high + 1, step))
