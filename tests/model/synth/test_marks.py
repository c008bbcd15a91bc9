"""Tests of how the marks look: dark filled marks with a darker outline."""

from __future__ import annotations

from scipy import ndimage

from model.synth.slide import generate_slide
from tests.model.synth.slides import plain_spec


def test_outlined_marks_are_darker_than_the_matrix_and_darkest_at_the_edge() -> None:
    spec = plain_spec(
        shape="ellipse",
        mark_size=36,
        contrast=-0.5,
        outline_strength=0.6,
        outline_width=2.5,
        background_level=0.6,
        blur_sigma=0.3,
        edge_softness=0.3,
    )
    slide = generate_slide(spec, 2)
    image = slide.image.astype(float)
    core = ndimage.binary_erosion(slide.mask, iterations=6)
    rim = slide.mask & ~ndimage.binary_erosion(slide.mask, iterations=2)
    far = ~ndimage.binary_dilation(slide.mask, iterations=6)
    assert image[core].mean() < image[far].mean() - 30  # darker than the matrix, not inverted
    assert image[rim].mean() < image[core].mean() - 10  # and darker still at the outline
    assert image[far].mean() > 90  # a bright matrix: the image itself is not inverted
