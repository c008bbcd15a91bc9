"""Tests of random_spec: given values respected, refusals, variety, matrix styles and the
share of faint slides."""

from __future__ import annotations

import dataclasses
import json

import pytest

from model.errors import AmsegError
from model.synth.slide import SyntheticSlide, generate_slide
from model.synth.spec import SlideSpec, SynthSpecError
from model.synth.styles import random_spec
from tests.model.synth.slides import plain_spec


def test_grid_beyond_uint16_ids_is_refused() -> None:
    with pytest.raises(AmsegError, match="65535"):
        random_spec(0, rows=300, cols=300)
    too_big = dataclasses.replace(plain_spec(), rows=256, cols=257)
    with pytest.raises(AmsegError, match="65535"):
        generate_slide(too_big, 0)


def test_unknown_settings_are_refused() -> None:
    with pytest.raises(AmsegError, match="shape"):
        generate_slide(plain_spec(shape="star"), 0)
    with pytest.raises(AmsegError, match="unknown"):
        random_spec(0, colour="red")


def test_random_spec_respects_given_values_and_is_json_ready() -> None:
    for seed in range(20):
        spec = random_spec(seed, height=300, width=400, rows=7, cols=9, mark_size=14, bit_depth=16)
        assert (spec.rows, spec.cols, spec.mark_size, spec.bit_depth) == (7, 9, 14, 16)
        assert (spec.height, spec.width) == (300, 400)
        assert abs(spec.angle_deg) <= 10
        assert spec.shape in ("crescent", "chevron", "ellipse", "blob", "mixed")
        decoded = json.loads(json.dumps(dataclasses.asdict(spec)))
        assert (
            SlideSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in decoded.items()})
            == spec
        )


def test_random_specs_vary(varied_slides: list[SyntheticSlide]) -> None:
    specs = [slide.spec for slide in varied_slides]
    assert len({spec.mark_size for spec in specs}) == len(specs)
    assert len({spec.shape for spec in specs}) >= 2
    assert len({(spec.rows, spec.cols) for spec in specs}) >= 2


def test_random_specs_cover_background_styles() -> None:
    specs = [random_spec(seed, height=64, width=64) for seed in range(60)]
    mottled = [s for s in specs if s.ridge_strength >= 0.5 and s.patch_strength >= 0.6]
    dark = [s for s in specs if s.polarity == "dark"]
    assert len(mottled) >= 8 and len(dark) >= 3
    assert any(s.double_cols or s.double_fraction > 0 for s in specs)


def test_background_fixes_the_matrix_style_and_keeps_seeds_reproducible() -> None:
    # Drawn freely, about a third of slides are mottled (patch strength >= 0.6, ridges >= 0.5);
    # asked for, every one is, and smooth ones never have ridges.
    free = [random_spec(seed) for seed in range(40)]
    assert 0 < sum(spec.ridge_strength >= 0.5 for spec in free) < 40
    mottled = [random_spec(seed, background="mottled") for seed in range(40)]
    assert all(s.patch_strength >= 0.6 and s.ridge_strength >= 0.5 for s in mottled)
    assert all(random_spec(seed, background="smooth").ridge_strength == 0 for seed in range(40))
    assert random_spec(5, background="mottled") == random_spec(5, background="mottled")
    # Where the drawn style already is the asked one, the spec is the same as without it.
    for seed, spec in enumerate(free):
        if spec.ridge_strength >= 0.5:
            assert random_spec(seed, background="mottled") == spec
    with pytest.raises(SynthSpecError, match="background"):
        random_spec(0, background="glossy")


def test_low_contrast_fraction_controls_faint_slides() -> None:
    def faint_share(fraction: float) -> float:
        specs = [random_spec(seed, low_contrast_fraction=fraction) for seed in range(60)]
        return sum(spec.contrast <= 0.4 and spec.background_level >= 0.22 for spec in specs) / 60

    assert faint_share(1.0) == 1.0
    assert faint_share(0.0) == 0.0
    with pytest.raises(SynthSpecError):
        random_spec(0, low_contrast_fraction=1.5)


# The settings of the opt-in styles, at their defaults (all styles off).
STYLES_OFF = {
    field.name: field.default
    for field in dataclasses.fields(SlideSpec)
    if field.name.startswith(("outline_", "streak_", "ghost_", "blotch_"))
}


def test_styles_are_drawn_only_when_asked() -> None:
    off = STYLES_OFF
    for seed in range(40):
        spec = random_spec(seed, height=64, width=64)
        assert {name: getattr(spec, name) for name in off} == off
    spec = random_spec(3, height=64, width=64)
    outlined = random_spec(3, height=64, width=64, style="outlined")
    assert outlined.contrast < 0 and outlined.outline_strength > 0
    assert outlined.streak_strength > 0 and outlined.polarity == "bright"
    ghosted = random_spec(3, height=64, width=64, style="ghosted")
    assert ghosted.ghost_fraction >= 0.4
    # A style's draws come after all the others: the rest of the spec is the default one.
    assert dataclasses.replace(ghosted, **off) == spec
    blotchy = random_spec(3, height=64, width=64, style="blotchy")
    assert blotchy.blotch_strength > 0 and blotchy.texture_contrast >= 0.55
    assert random_spec(3, height=64, width=64, style="blotchy", blotch_strength=0.1) == (
        dataclasses.replace(blotchy, blotch_strength=0.1)
    )
    with pytest.raises(SynthSpecError, match="style"):
        random_spec(0, style="glossy")
