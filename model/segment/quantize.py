"""int8: the OpenVINO export quantized after training (NNCF), once per weights, cached on disk.

Calibration tiles are cut from generated slides (`model.synth`: fixed seeds, every style, no
data files) exactly as `predict_image` cuts a user's image (padding, scale, normalization).
The convolutions that read the gray input and the one that writes the logits stay fp32: an
8-bit input loses the low bits of faint 16-bit marks, the threshold cuts the logits, and
these layers have one input or output channel, so int8 would gain little there. Keeping them
raised the worst real-crop mask Dice against fp32 from 0.990 to 0.995 (frs13, tile_013) at
no measurable cost in speed.

Weights are quantized to 7 bits everywhere (NNCF's overflow fix): CPUs without VNNI (AVX2,
AVX-512 without VNNI) multiply int8 pairs into saturating 16-bit sums, which cost that
agreement 0.003 (0.992 under a simulated AVX2 CPU, 0.995 with the fix); with VNNI the fix
changes it by under 0.001. So the card's check, measured on one CPU, holds on the others.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from model.errors import AmsegError
from model.segment import int8_recipe as recipe
from model.segment.predict import predict_image
from model.segment.runtime import ensure_cached_ir, is_cached, nncf_available
from model.segment.single_pass import SegmentOptions

# Layers between the input (or the logits) and a convolution that do not change what it reads.
_ELEMENTWISE = {
    "Multiply",
    "Add",
    "Subtract",
    "Divide",
    "Convert",
    "Broadcast",
    "Tile",
    "Pad",
    "Sigmoid",
}
_CONVOLUTIONS = {"Convolution", "GroupConvolution"}


def require_nncf() -> None:
    if not nncf_available():
        raise AmsegError(
            "precision int8 quantizes the network once with NNCF, which is not installed "
            "(pip install nncf); or choose --precision fp32"
        )


class _TileRecorder:
    """A `Segmenter` that keeps every tile it is given and answers 'no marks'."""

    name = "calibration"
    threshold = 0.5

    def __init__(self) -> None:
        self.tiles: list[np.ndarray] = []

    def predict_batch(self, tiles: np.ndarray) -> np.ndarray:
        self.tiles.extend(np.array(tiles, dtype=np.float32))
        return np.zeros_like(tiles, dtype=np.float32)


def calibration_tiles(
    tile_size: int,
    slides: int | None = None,
    per_slide: int | None = None,
    first_seed: int | None = None,
) -> np.ndarray:
    """(N, T, T) float32 tiles as the network sees them, from generated slides of every style
    in turn (the plain kind first); the same tiles on every call. Defaults: the recipe's
    (model/segment/int8_recipe.py)."""
    from model.synth.slide import generate_slide
    from model.synth.spec import STYLES
    from model.synth.styles import random_spec

    styles = (None, *STYLES)
    options = SegmentOptions(tile_size=tile_size)
    picked = []
    slides = recipe.CALIBRATION_SLIDES if slides is None else slides
    per_slide = recipe.CALIBRATION_TILES_PER_SLIDE if per_slide is None else per_slide
    first_seed = recipe.CALIBRATION_FIRST_SEED if first_seed is None else first_seed
    for index in range(slides):
        seed = first_seed + index
        spec = random_spec(
            seed,
            height=recipe.CALIBRATION_SLIDE_PX,
            width=recipe.CALIBRATION_SLIDE_PX,
            style=styles[index % len(styles)],
        )
        recorder = _TileRecorder()
        predict_image(generate_slide(spec, seed).image, recorder, options)
        order = np.random.default_rng(seed).permutation(len(recorder.tiles))
        picked += [recorder.tiles[i] for i in order[:per_slide]]
    return np.stack(picked)


def fp32_kept_layers(model: Any) -> list[str]:
    """Names of the convolutions that read the input or write the output (see the module
    docstring), found through element-wise layers only: the normalization, the sigmoid."""
    kept = []
    outputs = [parameter.output(0) for parameter in model.get_parameters()]
    while outputs:
        for target in outputs.pop().get_target_inputs():
            node = target.get_node()
            if node.get_type_name() in _CONVOLUTIONS:
                kept.append(node.get_friendly_name())
            elif node.get_type_name() in _ELEMENTWISE:
                outputs.extend(node.outputs())
    for result in model.get_results():
        node = result.input_value(0).get_node()
        while node.get_type_name() in _ELEMENTWISE:
            node = node.input_value(0).get_node()
        if node.get_type_name() in _CONVOLUTIONS:
            kept.append(node.get_friendly_name())
    return sorted(set(kept))


def quantize_export(fp32_xml: Path, int8_xml: Path, tiles: np.ndarray) -> None:
    """Quantize the fp32 IR with NNCF (mixed preset: symmetric weights, asymmetric
    activations; fast bias correction; 7-bit weights, see the module docstring) on `tiles`
    (N, T, T) and save it as `int8_xml`."""
    require_nncf()
    import nncf
    import openvino as ov

    model = ov.Core().read_model(str(fp32_xml))
    with _quiet_nncf():
        quantized = nncf.quantize(
            model,
            nncf.Dataset(list(tiles), lambda tile: tile[None, None]),
            preset=nncf.QuantizationPreset.MIXED,
            subset_size=len(tiles),
            fast_bias_correction=True,
            ignored_scope=nncf.IgnoredScope(names=fp32_kept_layers(model)),
            advanced_parameters=nncf.AdvancedQuantizationParameters(
                overflow_fix=nncf.OverflowFix.ENABLE
            ),
        )
    # Weights behind FakeQuantize are stored as int8 (the IR is ~1/3 of the fp32 one).
    ov.save_model(quantized, str(int8_xml), compress_to_fp16=False)


@contextlib.contextmanager
def _quiet_nncf():
    """NNCF's INFO lines and progress bars would land on stdout, which commands may use for
    their output: warnings only, and progress to stderr."""
    from nncf.common.logging.logger import nncf_logger

    level = nncf_logger.level
    nncf_logger.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        nncf_logger.setLevel(level)


def ensure_int8_export(xml: Path, fp32_xml: Callable[[], Path], tile_size: int) -> Path:
    """The int8 IR at `xml`, quantized (once, atomically, like the fp32 export) from the fp32
    one that `fp32_xml` provides (exporting it if needed) unless it is cached."""
    if is_cached(xml):
        return xml
    require_nncf()  # before the fp32 export and the calibration tiles: fail fast
    source = fp32_xml()
    tiles = calibration_tiles(tile_size)
    return ensure_cached_ir(xml, lambda target: quantize_export(source, target, tiles))
