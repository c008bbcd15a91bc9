"""What one training run is asked to do: `TrainConfig`, every setting `amseg train` exposes."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

MATRICES = ("DHB", "DAN")

# The settings a resumed run must share with the interrupted one (epochs may grow).
RUN_IDENTITY = (
    "encoder",
    "decoder",
    "decoder_channels",
    "in_channels",
    "full_res_skip",
    "legacy",
    "init_from",
    "from_scratch",
    "batch_size",
    "tile_size",
    "lr",
    "weight_decay",
    "warmup_fraction",
    "seed",
    "crops_per_epoch",
    "max_val_crops",
    "threshold",
    "scale_range",
    "mark_range",
    "augment",
    "disturb",
    "ema_decay",
    "loss",
)


@dataclass
class TrainConfig:
    """Everything `amseg train` exposes. `None` architecture fields mean: the base model's, else
    the defaults (efficientnet-b0, light decoder, 1 input channel)."""

    data: Path
    out: Path = Path("model-out")
    matrix: str | None = None
    encoder: str | None = None
    decoder: str | None = None  # "light" | "standard"
    decoder_channels: tuple[int, ...] | None = None  # explicit override (tests, experiments)
    in_channels: int | None = None
    # Full-resolution skip channels (network.FullResUnetDecoder); None: the base model's, else
    # 0. Asking for it on a plain base model adds it with zero weights (same outputs at first).
    full_res_skip: int | None = None
    legacy: bool = False
    init_from: Path | None = None
    from_scratch: bool = False
    epochs: int = 30
    batch_size: int = 8
    tile_size: int = 256  # training crop; the card says 512 for prediction
    predict_tile_size: int = 512
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.05
    seed: int = 0
    device: str = "auto"
    resume: bool = False
    crops_per_epoch: int | None = None  # None: training area / tile², at least one per image
    max_val_crops: int = 256
    threshold: float = 0.5
    scale_range: tuple[float, float] = (0.5, 2.0)
    # Mark sizes (px) the zoom may show: each image's zoom range is narrowed so that its
    # typical mark stays within MIN..MAX (see zoom_range); None zooms every image alike.
    mark_range: tuple[float, float] | None = None
    augment: bool = True
    # Chance per crop of each real-slide disturbance (see DISTURBANCES): dust blobs clear of
    # the marks, uneven light, defocus. 0 leaves the crops (and their random draws) as before.
    disturb: float = 0.0
    # Exponential moving average of the weights, validated and saved instead of the raw
    # weights; 0 turns it off. See WeightAverage for the warm-up that keeps short runs sane.
    ema_decay: float = 0.0
    loss: str = "bce-dice"  # or "bce-lovasz" (see LOSSES)
    num_workers: int | None = None  # None: 0 on CPU, up to 4 with CUDA
    threads: int | None = None  # CPU intra-op threads; None: every core (os.cpu_count())

    def identity(self) -> dict:
        """Settings a resumed run must share with the interrupted one (epochs may grow)."""
        raw = asdict(self)
        return {k: (str(raw[k]) if isinstance(raw[k], Path) else raw[k]) for k in RUN_IDENTITY}
