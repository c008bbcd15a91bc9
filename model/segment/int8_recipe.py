"""How the int8 IR is made (model/segment/quantize.py), in one place that imports nothing: the
int8 cache key (model/segment/runtime.py) and a shipped int8 IR's check (shipped_ir.py) hash
it, so an IR made by another recipe is never taken for this one's."""

from __future__ import annotations

import hashlib
import json

# 12 slides x 4 tiles (3 slides of each style): cutting them takes ~8 s and NNCF's statistics
# on 48 tiles of 512 px ~25 s on a busy 2-core CPU; 64 or 128 tiles changed the worst
# real-crop agreement with fp32 by under 0.001 (frs13).
CALIBRATION_SLIDES = 12
CALIBRATION_TILES_PER_SLIDE = 4
CALIBRATION_SLIDE_PX = 1024
# Far from the seeds of training data (1000-9600) and of the regression sets (600000-900047).
CALIBRATION_FIRST_SEED = 500_000
# Bump when the recipe changes in a way int8_recipe() does not show (the calibration tiles'
# code, the layers kept in fp32, NNCF's parameters in quantize.quantize_export).
INT8_VERSION = "1"


def int8_recipe() -> dict:
    """The recipe as recorded with a shipped int8 IR (NNCF's version is added to the cache
    key apart: model.segment.runtime.int8_key)."""
    return {
        "version": INT8_VERSION,
        "calibration_slides": CALIBRATION_SLIDES,
        "tiles_per_slide": CALIBRATION_TILES_PER_SLIDE,
        "slide_px": CALIBRATION_SLIDE_PX,
        "first_seed": CALIBRATION_FIRST_SEED,
        "preset": "mixed",
        "fast_bias_correction": True,
        "overflow_fix": "enable",
        "fp32_kept": "input and logit convolutions",
    }


def int8_recipe_key() -> str:
    """A short hash of `int8_recipe()`."""
    text = json.dumps(int8_recipe(), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:8]
