"""Grids shared by the registration tests: the all-defects grid and registering a grid mask."""

from __future__ import annotations

from model.register.records import Registration
from model.register.registration import register_marks
from tests.model.grid_masks import GridMask, GridSpec

# Everything at once: the hard cases of the legacy registration (seed spec §7.2).
HARD = GridSpec(
    rows=12,
    cols=15,
    pitch_x=30.0,
    pitch_y=27.0,
    shear=0.02,
    jitter=0.03,
    missing_fraction=0.05,
    missing_rows=(5,),
    missing_cols=(7,),
    ellipse_fraction=0.15,
    crescent_fraction=0.15,
    fragment_fraction=0.1,
    touching_pairs=3,
    specks=40,
    dust=5,
    margin=0.1,
)


def register_grid(grid: GridMask) -> Registration:
    return register_marks(grid.mask, grid.spec.rows, grid.spec.cols)
