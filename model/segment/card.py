"""The model card: everything about a trained model but its weights (`model_card.json`).

Torch-free, so that a process that runs a cached OpenVINO export never imports torch.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from model import __version__
from model.errors import AmsegError

CARD_FORMAT = "amseg-model/1"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "model_card.json"
DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[1] / "weights" / "default"

LIGHT_DECODER = (128, 64, 32, 16, 8)
SMP_DEFAULT_DECODER = (256, 128, 64, 32, 16)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ModelCard:
    """Everything about a trained model except its weights (stored as model_card.json)."""

    encoder: str = "efficientnet-b0"
    decoder_channels: tuple[int, ...] = LIGHT_DECODER
    in_channels: int = 1
    architecture: str = "Unet"
    # Channels of a small full-resolution branch on the input, fed to the last decoder block
    # (0: the plain smp U-Net, whose finest skip is at half resolution). See FullResUnetDecoder.
    full_res_skip: int = 0
    # Tiles arrive normalized to [0, 1] (percentile clip); the network sees (x - mean) / std,
    # per input channel (gray is replicated for 3-channel networks).
    input_mean: tuple[float, ...] = (0.5,)
    input_std: tuple[float, ...] = (0.25,)
    tile_size: int = 512
    threshold: float = 0.5
    mark_px: float | None = None  # typical mark diameter (px) the model works best at
    matrix: str | None = None  # MALDI matrix the model was trained for (DHB, DAN)
    data: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    amseg_version: str = __version__
    format: str = CARD_FORMAT

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> ModelCard:
        raw = json.loads(text)
        if raw.get("format") != CARD_FORMAT:
            raise AmsegError(f"unsupported model card format {raw.get('format')!r}")
        known = {f for f in cls.__dataclass_fields__}
        values = {k: v for k, v in raw.items() if k in known}
        for key in ("decoder_channels", "input_mean", "input_std"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)


def is_model_dir(directory: Path) -> bool:
    """Whether `directory` holds a card and weights."""
    return (directory / CARD_FILE).is_file() and (directory / WEIGHTS_FILE).is_file()


def read_card(directory: Path) -> ModelCard:
    """The card of a model directory, or a clear error when it is not one."""
    path = directory / CARD_FILE
    if not is_model_dir(directory):
        raise AmsegError(
            f"{directory}: not a model directory (needs {CARD_FILE} and {WEIGHTS_FILE})"
        )
    try:
        return ModelCard.from_json(path.read_text())
    except (OSError, ValueError, TypeError) as err:
        raise AmsegError(f"{path}: unreadable model card ({err})") from err


def write_card(directory: Path, card: ModelCard) -> Path:
    """Write `card` into `directory` atomically; returns the card's path."""
    import os

    path = directory / CARD_FILE
    tmp = directory / f".{CARD_FILE}.tmp"
    tmp.write_text(card.to_json())
    os.replace(tmp, path)
    return path
