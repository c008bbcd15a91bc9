"""A plain synthetic slide spec for tests: a regular 4x4 grid, no random irregularities."""

from __future__ import annotations

import dataclasses

from model.synth.spec import SlideSpec
from model.synth.styles import random_spec


def plain_spec(**changes: object) -> SlideSpec:
    """A regular grid fully inside a 256 px slide, without random irregularities."""
    spec = random_spec(5, height=256, width=256, rows=4, cols=4, mark_size=24, bit_depth=8)
    regular = dict(
        pitch_y=60.0,
        pitch_x=60.0,
        origin_y=38.0,
        origin_x=38.0,
        angle_deg=0.0,
        shear=0.0,
        shape="crescent",
        polarity="bright",
        contrast=0.9,
        missing_fraction=0.0,
        missing_rows=(),
        missing_cols=(),
        fragment_fraction=0.0,
        touching_fraction=0.0,
        row_shift=0.0,
        row_spacing_jitter=0.0,
        jitter=0.0,
        size_jitter=0.05,
        double_fraction=0.0,
        double_cols=(),
    )
    regular.update(changes)
    return dataclasses.replace(spec, **regular)
