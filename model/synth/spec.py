"""What one synthetic slide is: `SlideSpec`, every knob of it, and the checks on its values."""

from __future__ import annotations

from dataclasses import dataclass

from model.errors import AmsegError

MAX_MARKS = 65535
"""Ids are stored as uint16, so a grid may hold at most this many nodes."""

SHAPES = ("crescent", "chevron", "ellipse", "blob", "mixed")
POLARITIES = ("bright", "dark")
BIT_DEPTHS = (8, 16)
# Matrix styles `random_spec` draws from (see model.synth.styles), with their shares.
BACKGROUNDS = ("granular", "mottled", "smooth")
# Kinds of slide `random_spec` draws only when asked (model.synth.styles): dark filled marks
# with a darker outline on a bright fibrous matrix; a fainter ghost crescent beside many
# marks (not in the truth); heavy blotchy speckle.
STYLES = ("outlined", "ghosted", "blotchy")


class SynthSpecError(AmsegError):
    """A synthetic-slide request cannot be fulfilled (bad size, grid too large, unknown shape)."""


@dataclass(frozen=True)
class SlideSpec:
    """Every knob of one synthetic slide; JSON-serialisable with `dataclasses.asdict`.

    Lengths are in pixels, fractions in 0..1, angles in degrees. Intensities are on a
    normalised 0..1 scale (1 = top of the output range) before the final quantisation.
    """

    height: int
    width: int
    rows: int
    cols: int
    pitch_y: float
    pitch_x: float
    angle_deg: float
    shear: float
    origin_y: float
    origin_x: float
    mark_size: float
    shape: str
    bit_depth: int
    polarity: str
    # Fill level of the marks: the share of the way from the matrix level to the top of the
    # range (> 0, bright marks) or to black (< 0, marks darker than the matrix, which is then
    # not inverted as with polarity "dark").
    contrast: float
    missing_fraction: float = 0.0
    missing_rows: tuple[int, ...] = ()
    missing_cols: tuple[int, ...] = ()
    fragment_fraction: float = 0.0
    touching_fraction: float = 0.0
    # Grid irregularity: alternate rows shifted by +-row_shift along x (serpentine stage
    # backlash), every row displaced along y by N(0, row_spacing_jitter) (uneven spacing),
    # every mark displaced by N(0, jitter).
    row_shift: float = 0.0
    row_spacing_jitter: float = 0.0
    jitter: float = 0.0
    # Mark appearance: opening direction of crescents/chevrons in the lattice frame, its
    # per-mark spread, relative size and brightness spread, opacity, rim brightening.
    mark_angle_deg: float = 20.0
    mark_angle_jitter: float = 6.0
    size_jitter: float = 0.08
    brightness_jitter: float = 0.08
    mark_opacity: float = 0.95
    rim_strength: float = 0.1
    mark_texture: float = 0.1
    # Background: mean level, grain size (px), log-contrast of the grain texture, weight of
    # grain clumps relative to single grains, share of dark voids.
    background_level: float = 0.2
    grain_size: float = 1.5
    texture_contrast: float = 0.5
    clump_strength: float = 0.4
    void_fraction: float = 0.05
    # Optics and sensor.
    blur_sigma: float = 0.8
    shot_noise: float = 0.03
    read_noise: float = 0.01
    gamma: float = 1.0
    vignetting: float = 0.1
    gradient: float = 0.1
    gradient_angle_deg: float = 0.0
    # Debris per megapixel: small specks, thin fibres, out-of-focus smudges (never marks).
    dust_density: float = 20.0
    fibre_density: float = 2.0
    smudge_density: float = 1.0
    # 16-bit output: significant bits (12..16) and dark offset as a fraction of full scale.
    signal_bits: int = 16
    dark_offset: float = 0.02
    # Added for realism (defaults keep older specs meaningful). Per-mark spread of the
    # outline around the slide's common shape; crescents mirrored (long arm on top).
    shape_jitter: float = 0.1
    mark_mirror: bool = False
    # Edge softness of the marks (Gaussian sigma, px) on top of the optical blur.
    edge_softness: float = 0.8
    # Background structure beyond grain and clumps: 5-15 px mottling (bright crystal
    # patches), worm-like fibrous ridges, and how dark the voids get.
    patch_strength: float = 0.15
    ridge_strength: float = 0.0
    void_depth: float = 0.4
    # Tone curve: black and white level of the output range; the highlights roll off
    # softly into the white level (real sensors/exports rarely hit full scale).
    black_level: float = 0.0
    white_level: float = 1.0
    # Double (displaced) marks: a second, fainter mark next to the node's own, same id.
    # Nodes in `double_cols` mostly get one, others with `double_fraction`; the offset is
    # a fraction of the pitch in the lattice frame direction `double_angle_deg`.
    double_fraction: float = 0.0
    double_cols: tuple[int, ...] = ()
    double_offset: float = 0.4
    double_angle_deg: float = 90.0
    double_brightness: float = 0.6
    double_scale: float = 0.8
    # Share of the out-of-focus smudges placed next to a mark (partly merging with it).
    smudge_near_marks: float = 0.3
    # The opt-in styles of STYLES (issue 28 §3); the defaults switch them off, and a slide
    # with them off is the same, pixel for pixel, as before they existed. Their random
    # numbers come from a stream of their own, so switching one on changes only what it adds.
    # Outline: the marks' edge band, `outline_width` px deep, darker than the fill by the
    # share `outline_strength`; part of the mark (inside its truth).
    outline_strength: float = 0.0
    outline_width: float = 2.0
    # Streaks: long, thin bright fibres in the matrix, `streak_length` px long, mostly along
    # `streak_angle_deg` (image frame), weighted like the other matrix components.
    streak_strength: float = 0.0
    streak_length: float = 30.0
    streak_angle_deg: float = 0.0
    # Ghosts: a fainter copy of the mark beside `ghost_fraction` of the nodes, `ghost_offset`
    # mark sizes away in the lattice frame direction `ghost_angle_deg`, at `ghost_brightness`
    # of the mark's opacity and `ghost_scale` of its size. Light only: NOT in the truth (mask,
    # labels), unlike the double marks above, so a model learns to leave ghosts out; the old
    # model's masks held only the main mark as well.
    ghost_fraction: float = 0.0
    ghost_offset: float = 0.6
    ghost_angle_deg: float = 0.0
    ghost_brightness: float = 0.35
    ghost_scale: float = 0.9
    # Blotches: large dark and bright patches over the matrix, a log-normal factor of
    # log-contrast `blotch_strength`, correlated over `blotch_size` px.
    blotch_strength: float = 0.0
    blotch_size: float = 10.0


def validate_spec(spec: SlideSpec) -> None:
    """Refuse a spec that cannot be rendered, with a message that names the bad value."""
    if spec.height < 1 or spec.width < 1:
        raise SynthSpecError(f"slide size must be positive, got {spec.width}x{spec.height}")
    if spec.rows < 1 or spec.cols < 1:
        raise SynthSpecError(
            f"grid must have at least one row and column, got {spec.rows}x{spec.cols}"
        )
    check_grid_size(spec.rows, spec.cols)
    if spec.shape not in SHAPES:
        raise SynthSpecError(
            f"unknown mark shape {spec.shape!r}; choose one of {', '.join(SHAPES)}"
        )
    if spec.polarity not in POLARITIES:
        raise SynthSpecError(f"unknown polarity {spec.polarity!r}; choose bright or dark")
    if spec.bit_depth not in BIT_DEPTHS:
        raise SynthSpecError(f"bit depth must be 8 or 16, got {spec.bit_depth}")
    if not 1.0 <= spec.mark_size <= 256.0:
        raise SynthSpecError(f"mark size must be between 1 and 256 px, got {spec.mark_size}")
    if spec.pitch_x <= 0 or spec.pitch_y <= 0:
        raise SynthSpecError("grid pitch must be positive")
    if not 8 <= spec.signal_bits <= 16:
        raise SynthSpecError(f"signal bits must be in 8..16, got {spec.signal_bits}")
    if spec.contrast < -1.0:
        raise SynthSpecError(f"contrast must be at least -1 (black marks), got {spec.contrast}")
    if spec.outline_width <= 0 or spec.streak_length < 1 or spec.blotch_size <= 0:
        raise SynthSpecError("outline width, streak length and blotch size must be positive")


def check_grid_size(rows: int, cols: int) -> None:
    """Refuse a grid with more nodes than uint16 ids can number."""
    if rows * cols > MAX_MARKS:
        raise SynthSpecError(
            f"a {rows}x{cols} grid has {rows * cols} marks, more than the {MAX_MARKS} "
            "that uint16 ids can number"
        )
