"""Neural mark segmentation: a trained U-Net behind the `Segmenter` interface, fast on CPU and GPU.

Also estimates the grid pitch of an image and resamples large marks down before the network.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from model.errors import AmsegError
from model.imageio import to_grayscale
from model.metrics import dice
from model.normalize import fill_padding, find_padding
from model.pipeline import (
    MAX_SCALE,
    Segmentation,
    SegmentOptions,
    remove_small_components,
    segment_image,
)
from model.segmenters import Segmenter
from model.tiling import Tile, plan_tiles

if TYPE_CHECKING:
    import torch

    from model.network import ModelCard

# torch and segmentation-models-pytorch take ~4 s to import; a process whose OpenVINO export
# is cached never needs them, so `model.network` and `model.torch_runtime` load on demand.
# These mirror model.network's constants (a test keeps them equal).
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "weights" / "default"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "model_card.json"
CARD_FORMAT = "amseg-model/1"

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
BACKENDS = ("auto", "torch", "openvino")

# A reduced-precision path must give the same masks as fp32 on real crops (Dice >= this).
MIN_REDUCED_PRECISION_DICE = 0.99
# Model-card metric written by whoever validated bf16 on a trained model; a value below
# MIN_REDUCED_PRECISION_DICE makes precision="auto" stay in fp32 for that model.
BF16_DICE_METRIC = "bf16_mask_dice"

# Eager CPU runs slower on batches than on single tiles (cache pressure; measured in
# benchmarks/backends.py), OpenVINO is indifferent; a GPU needs batches to be kept busy.
CPU_BATCH_SIZE = 1
CUDA_BATCH_SIZE = 16

_EXPORT_VERSION = "1"  # bump when the exported graph changes (normalization, output)


# --------------------------------------------------------------------------------------------
# Hardware and backend detection


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


@functools.cache
def cpu_supports_bf16() -> bool:
    """True when the CPU computes bf16 natively (AVX512-BF16 or AMX); emulated bf16 is slower."""
    flags = _cpu_flags()
    if flags:
        return bool(flags & {"avx512_bf16", "amx_bf16"})
    # No /proc/cpuinfo (not Linux): torch reports AMX-capable CPUs by capability name.
    from model.torch_runtime import cpu_capability

    return "AMX" in cpu_capability().upper()


@functools.cache
def cuda_available() -> bool:
    """Whether torch sees a CUDA GPU; without an NVIDIA driver on Linux, torch is not imported."""
    if sys.platform == "linux" and not Path("/proc/driver/nvidia/version").exists():
        return False
    from model.torch_runtime import cuda_available as torch_cuda_available

    return torch_cuda_available()


def openvino_available() -> bool:
    """Whether the optional OpenVINO runtime is installed."""
    return importlib.util.find_spec("openvino") is not None


def default_threads() -> int:
    """CPU cores this process may use (the affinity mask, which os.cpu_count() ignores)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


@dataclasses.dataclass(frozen=True)
class Runtime:
    """Where and how the network runs, with every "auto" resolved."""

    device: str
    backend: str
    precision: str
    threads: int
    batch_size: int

    def describe(self) -> str:
        where = "GPU" if self.device == "cuda" else f"CPU, {self.threads} threads"
        return f"{self.backend} {self.precision} ({where})"


def resolve_runtime(
    metrics: dict | None = None,
    device: str = "auto",
    precision: str = "auto",
    backend: str = "auto",
    threads: int | None = None,
    batch_size: int | None = None,
) -> Runtime:
    """Turn the user's choices (each may be "auto") into a concrete runtime, or explain why not.

    `metrics` are the model card's; a recorded failed bf16 check keeps "auto" in fp32.
    """
    for value, allowed, what in (
        (device, DEVICES, "device"),
        (precision, PRECISIONS, "precision"),
        (backend, BACKENDS, "backend"),
    ):
        if value not in allowed:
            raise AmsegError(f"unknown {what} {value!r}; choose one of {', '.join(allowed)}")
    if device == "auto":
        device = "cuda" if cuda_available() else "cpu"
    elif device == "cuda" and not cuda_available():
        raise AmsegError("--device cuda was asked for, but torch sees no CUDA GPU")

    if backend == "auto":
        backend = "openvino" if device == "cpu" and openvino_available() else "torch"
    elif backend == "openvino":
        if device != "cpu":
            raise AmsegError("the openvino backend runs on the CPU only; use --backend torch")
        if not openvino_available():
            raise AmsegError("the openvino backend is not installed (pip install openvino)")

    if precision == "auto":
        if device == "cuda":
            from model.torch_runtime import cuda_bf16_supported

            precision = "bf16" if cuda_bf16_supported() else "fp16"
        else:
            bf16_dice = (metrics or {}).get(BF16_DICE_METRIC)
            vetoed = bf16_dice is not None and float(bf16_dice) < MIN_REDUCED_PRECISION_DICE
            precision = "bf16" if cpu_supports_bf16() and not vetoed else "fp32"
    elif precision == "fp16" and device == "cpu":
        raise AmsegError("fp16 is a GPU precision; on the CPU use bf16 or fp32")

    if threads is not None and threads < 1:
        raise AmsegError(f"threads must be at least 1, got {threads}")
    if batch_size is not None and batch_size < 1:
        raise AmsegError(f"batch size must be at least 1, got {batch_size}")
    return Runtime(
        device=device,
        backend=backend,
        precision=precision,
        threads=threads or default_threads(),
        batch_size=batch_size or (CUDA_BATCH_SIZE if device == "cuda" else CPU_BATCH_SIZE),
    )


# --------------------------------------------------------------------------------------------
# OpenVINO: export once per weights, cached on disk


def cache_root() -> Path:
    """Where exported models are kept: $AMSEG_CACHE_DIR, else $XDG_CACHE_HOME/amseg."""
    if os.environ.get("AMSEG_CACHE_DIR"):
        return Path(os.environ["AMSEG_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "amseg"


def directory_fingerprint(directory: Path) -> str:
    """Hash of a model directory's weights and card (export cache key; no torch needed)."""
    digest = hashlib.sha256()
    for name in (CARD_FILE, WEIGHTS_FILE):
        with (directory / name).open("rb") as handle:
            digest.update(hashlib.file_digest(handle, "sha256").digest())
    return digest.hexdigest()[:24]


def _export_path(fingerprint: str) -> Path:
    import openvino as ov

    version = ov.__version__.split("-")[0]
    return cache_root() / "openvino" / f"{fingerprint}-e{_EXPORT_VERSION}-ov{version}" / "model.xml"


def _ensure_openvino_export(xml: Path, make_net: Callable[[], Any]) -> Path:
    """Export (once, atomically: concurrent workers may race) unless `xml` is cached."""
    if xml.is_file() and xml.with_suffix(".bin").is_file():
        return xml
    from model.torch_runtime import export_openvino

    target = xml.parent
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the cache may be shared by workers
    try:
        export_openvino(make_net(), staging / xml.name)
        try:
            os.replace(staging, target)  # atomic; fails if another process got there first
        except OSError:
            if not xml.is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return xml


class _OpenVinoRunner:
    """OpenVINO on the CPU, compiled from the cached IR (probabilities out, like ProbabilityNet)."""

    def __init__(self, xml: Path, runtime: Runtime) -> None:
        import openvino as ov

        core = ov.Core()
        config = {
            "INFERENCE_PRECISION_HINT": "bf16" if runtime.precision == "bf16" else "f32",
            "INFERENCE_NUM_THREADS": runtime.threads,
            "PERFORMANCE_HINT": "LATENCY",  # one stream using every thread: one tile at a time
        }
        if os.access(xml.parent, os.W_OK):
            # OpenVINO keeps the compiled network there, keyed by these settings and its
            # version: later processes load it (0.06-0.12 s on a 2-core CPU) instead of
            # compiling it (0.15-0.18 s). A damaged or half-written file is detected,
            # compiled afresh and replaced.
            config["CACHE_DIR"] = str(xml.parent / "compiled")
        self.compiled = core.compile_model(str(xml), "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.lock = threading.Lock()  # one infer request: calls from threads must take turns

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(batch[:, None], dtype=np.float32)
        with self.lock:
            result = self.request.infer({0: x})
            return np.array(result[0][:, 0], dtype=np.float32, copy=True)


# --------------------------------------------------------------------------------------------
# The segmenter


def _read_card(directory: Path) -> dict:
    try:
        raw = json.loads((directory / CARD_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return raw if isinstance(raw, dict) else {}


class TorchSegmenter:
    """A trained U-Net as a `Segmenter`: (N, T, T) tiles in [0, 1] → (N, T, T) probabilities.

    Built from an in-memory network and card, or with `from_model_dir`, which skips torch
    altogether when the OpenVINO backend is chosen and the export is already cached.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        card: ModelCard,
        *,
        device: str = "auto",
        precision: str = "auto",
        backend: str = "auto",
        threads: int | None = None,
        batch_size: int | None = None,
        model_dir: Path | None = None,
    ) -> None:
        from model import torch_runtime

        runtime = resolve_runtime(card.metrics, device, precision, backend, threads, batch_size)
        self._setup(runtime, card.encoder, card.threshold, card.tile_size, model_dir)
        self._card: ModelCard | None = card
        net = torch_runtime.ProbabilityNet(network.float().cpu().eval(), card).eval()
        if runtime.backend == "openvino":
            fingerprint = (
                directory_fingerprint(model_dir)
                if model_dir is not None
                else torch_runtime.state_fingerprint(network, card)
            )
            xml = _ensure_openvino_export(_export_path(fingerprint), lambda: net)
            self._run = _OpenVinoRunner(xml, runtime)
        else:
            if runtime.device == "cpu":
                torch_runtime.set_threads(runtime.threads)
            self._run = torch_runtime.TorchRunner(net, runtime.device, runtime.precision)

    def _setup(
        self,
        runtime: Runtime,
        encoder: str,
        threshold: float,
        tile_size: int,
        model_dir: Path | None,
    ) -> None:
        self.runtime = runtime
        self.encoder = encoder
        self.name = f"unet-{encoder}"
        self.threshold = float(threshold)
        self.tile_size = int(tile_size)
        self.model_dir = model_dir
        self._run: Callable[[np.ndarray], np.ndarray]

    @classmethod
    def from_model_dir(
        cls,
        path: Path | str | None = None,
        *,
        device: str = "auto",
        precision: str = "auto",
        backend: str = "auto",
        threads: int | None = None,
        batch_size: int | None = None,
    ) -> TorchSegmenter:
        """Load a model directory (default: the model shipped with amseg)."""
        directory = Path(path) if path is not None else DEFAULT_MODEL_DIR
        if path is None and not (directory / WEIGHTS_FILE).is_file():
            raise AmsegError(
                f"no trained default model in {directory}; pass a model directory with "
                "--model DIR (or use the classical segmenter where a command offers it)"
            )
        raw = _read_card(directory)
        runtime = resolve_runtime(
            raw.get("metrics"), device, precision, backend, threads, batch_size
        )
        fast = runtime.backend == "openvino" and raw.get("format") == CARD_FORMAT
        if fast and {"encoder", "threshold", "tile_size"} <= raw.keys():
            xml = _export_path(directory_fingerprint(directory))
            if xml.is_file() and xml.with_suffix(".bin").is_file():
                segmenter = cls.__new__(cls)
                segmenter._setup(
                    runtime, raw["encoder"], raw["threshold"], raw["tile_size"], directory
                )
                segmenter._card = None
                segmenter._run = _OpenVinoRunner(xml, runtime)
                return segmenter
        from model.network import load_model

        network, card = load_model(directory, device="cpu")
        return cls(
            network,
            card,
            device=runtime.device,
            precision=runtime.precision,
            backend=runtime.backend,
            threads=runtime.threads,
            batch_size=runtime.batch_size,
            model_dir=directory,
        )

    @property
    def card(self) -> ModelCard:
        """The model card (read on first use when the segmenter was loaded without torch)."""
        if self._card is None:
            from model.network import ModelCard

            self._card = ModelCard.from_json((self.model_dir / CARD_FILE).read_text())
        return self._card

    def describe(self) -> str:
        """One line for logs: model, backend, precision, device."""
        where = f" from {self.model_dir}" if self.model_dir is not None else ""
        return f"{self.encoder} U-Net{where} via {self.runtime.describe()}"

    def predict_batch(self, tiles: np.ndarray) -> np.ndarray:
        """Probabilities (N, T, T) float32 in [0, 1] for tiles (N, T, T) float32 in [0, 1]."""
        tiles = np.asarray(tiles, dtype=np.float32)
        if tiles.ndim != 3:
            raise ValueError(f"tiles must be (N, T, T), got shape {tiles.shape}")
        out = np.empty(tiles.shape, dtype=np.float32)
        step = self.runtime.batch_size
        for start in range(0, len(tiles), step):
            out[start : start + step] = self._run(tiles[start : start + step])
        return out


@functools.lru_cache(maxsize=4)
def _cached_segmenter(
    path: Path,
    device: str,
    precision: str,
    backend: str,
    threads: int | None,
    batch_size: int | None,
) -> TorchSegmenter:
    return TorchSegmenter.from_model_dir(
        path,
        device=device,
        precision=precision,
        backend=backend,
        threads=threads,
        batch_size=batch_size,
    )


def get_segmenter(
    path: Path | str | None = None,
    *,
    device: str = "auto",
    precision: str = "auto",
    backend: str = "auto",
    threads: int | None = None,
    batch_size: int | None = None,
) -> TorchSegmenter:
    """The segmenter for a model directory, loaded once per process (for long-lived workers)."""
    if path is None:
        directory = DEFAULT_MODEL_DIR
        if not (directory / WEIGHTS_FILE).is_file():
            return TorchSegmenter.from_model_dir(None)  # raises the clear "no default" error
    else:
        directory = Path(path)
    return _cached_segmenter(directory.resolve(), device, precision, backend, threads, batch_size)


# --------------------------------------------------------------------------------------------
# Grid pitch and scale


PITCH_MIN_PX = 8.0  # smallest grid period looked for (marks >= 8 px, pitch >= 1.3 x mark)
PITCH_MAX_PX = 240.0  # largest (60-px marks at 3.5-4x pitch)
_PITCH_WORK_SIDE = 2048  # the estimate runs on a copy at most this large
_NOISE_SIGMAS = 8.0  # a lattice peak must stand this many noise sigmas above zero
_MIN_PEAK = 0.01  # ... and reach this normalized autocorrelation


def estimate_mark_pitch(image: np.ndarray) -> float | None:
    """The period (px) of the mark grid: length of the shortest lattice vector, or None.

    Works on the autocorrelation of a downsampled, high-passed copy: a grid of marks gives
    peaks at every lattice vector. The shortest strong peak whose second harmonic is there
    too is one lattice vector; the shortest clear peak in another direction is the other
    (rows may be unevenly spaced, so no harmonic is asked of it). Returns the shorter one,
    i.e. the smaller of the row and column pitch, refined to sub-pixel. No grid → None.
    """
    gray = to_grayscale(image)
    if gray.dtype not in (np.uint8, np.uint16, np.float32, np.float64):
        gray = gray.astype(np.float32)
    height, width = gray.shape
    factor = max(1.0, max(height, width) / _PITCH_WORK_SIDE)
    if factor > 1.0:
        size = (max(1, round(width / factor)), max(1, round(height / factor)))
        work = cv2.resize(gray, size, interpolation=cv2.INTER_AREA).astype(np.float32)
    else:
        work = gray.astype(np.float32)
    min_lag = max(2.0, 0.8 * PITCH_MIN_PX / factor)
    max_lag = min(PITCH_MAX_PX / factor, min(work.shape) / 3.0)
    if max_lag <= 2 * min_lag:
        return None  # too small an image to hold two periods of any plausible grid

    # Clip window from every other row and column: a quarter of the sorting, same percentiles
    # to well within the precision a clip needs. Only float input can hold NaN or inf.
    sample = work[::2, ::2] if min(work.shape) >= 64 else work
    floating = np.issubdtype(gray.dtype, np.floating)
    if floating:
        sample = sample[np.isfinite(sample)]
    low, high = np.percentile(sample, (1.0, 99.5)) if sample.size else (0.0, 0.0)
    if high <= low:
        return None
    if floating:
        work = np.nan_to_num(work, nan=low)
    work = np.clip(work, low, high)
    work = (work - low) / (high - low)
    # Remove vignetting and gradients; periods up to max_lag keep >= 99 % of their amplitude.
    work -= _smooth(work, max_lag / 2.0)
    acf = _autocorrelation(work, int(np.ceil(max_lag)) + 2)
    if acf is None:
        return None
    lattice = _lattice_vectors(acf, min_lag, max_lag, work.size)
    if lattice is None:
        return None
    return float(min(np.hypot(*v) for v in lattice) * factor)


def _smooth(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur with a large sigma, computed on a copy downsampled by ~sigma/4 (fast)."""
    step = max(1, int(sigma // 4))
    if step == 1:
        return cv2.GaussianBlur(image, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    height, width = image.shape
    small = cv2.resize(
        image, (max(1, width // step), max(1, height // step)), interpolation=cv2.INTER_AREA
    )
    small = cv2.GaussianBlur(small, (0, 0), sigma / step, borderType=cv2.BORDER_REFLECT)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)


def _autocorrelation(work: np.ndarray, max_lag: int) -> np.ndarray | None:
    """Unbiased autocorrelation for lags |dy|, |dx| <= max_lag, normalized to acf(0) = 1.

    Zero padding makes it a linear (not circular) correlation, and dividing by the number of
    overlapping pixel pairs at each lag removes the bias towards short lags. OpenCV's DFT
    (packed real spectrum) rather than scipy.fft: as fast, and no ~0.1 s scipy import.
    """
    height, width = work.shape
    shape = (cv2.getOptimalDFTSize(height + max_lag), cv2.getOptimalDFTSize(width + max_lag))
    padded = np.zeros(shape, np.float32)
    padded[:height, :width] = work - work.mean()
    spectrum = cv2.dft(padded)
    full = cv2.idft(cv2.mulSpectrums(spectrum, spectrum, 0, conjB=True), flags=cv2.DFT_REAL_OUTPUT)
    if full[0, 0] <= 0:
        return None
    lags = np.arange(-max_lag, max_lag + 1)
    acf = full[np.ix_(lags % shape[0], lags % shape[1])].astype(np.float64)
    acf /= np.outer(height - np.abs(lags), width - np.abs(lags))
    return (acf / acf[max_lag, max_lag]).astype(np.float32)


def _lattice_vectors(
    acf: np.ndarray, min_lag: float, max_lag: float, pixels: int
) -> list[np.ndarray] | None:
    """The shortest lattice vector and, if found, the shortest one in another direction."""
    centre = acf.shape[0] // 2
    dy, dx = np.mgrid[-centre : centre + 1, -centre : centre + 1]
    radius = np.hypot(dy, dx)
    annulus = (radius >= min_lag) & (radius <= max_lag)
    # Bartlett: an autocorrelation estimate has variance ~ sum(acf(j)^2) / N over the short-range
    # correlation (grains, the marks themselves); lattice peaks must stand well above it.
    short_range = radius < min_lag
    noise = float(np.sqrt(np.sum(acf[short_range] ** 2) / pixels))
    floor = max(_MIN_PEAK, _NOISE_SIGMAS * noise)
    local_max = cv2.dilate(acf, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_REPLICATE)
    peaks = (acf == local_max) & (acf > floor)
    # Half plane: the autocorrelation is symmetric, v and -v are the same peak.
    peaks &= annulus & ((dy > 0) | ((dy == 0) & (dx > 0)))
    ys, xs = np.nonzero(peaks)
    if len(ys) == 0:
        return None
    heights = acf[ys, xs]
    vectors = np.stack([dy[ys, xs], dx[ys, xs]], axis=1).astype(np.float64)
    by_length = np.argsort(np.hypot(vectors[:, 0], vectors[:, 1]), kind="stable")

    first = None
    for index in by_length:
        if heights[index] >= 0.5 * heights.max():
            first = _refine(acf, vectors[index], max_lag, floor / 2, need_harmonic=True)
            if first is not None:
                first_height = heights[index]
                break
    if first is None:
        return None
    result = [first]
    for index in by_length:
        vector = vectors[index]
        sine = abs(first[0] * vector[1] - first[1] * vector[0])
        sine /= np.hypot(*first) * np.hypot(*vector)
        # More than 30° from the first vector: the other lattice direction. A peak under half
        # the first vector's length must be as strong as a first vector: weaker, it is the
        # marks' own shape (the two arms of aligned crescents), not a near-square grid.
        short = np.hypot(*vector) < 0.5 * np.hypot(*first)
        if sine > 0.5 and heights[index] >= (0.5 if short else 0.25) * first_height:
            second = _refine(acf, vector, max_lag, floor / 2, need_harmonic=False)
            if second is not None:
                result.append(second)
            break
    return result


def _refine(
    acf: np.ndarray, vector: np.ndarray, max_lag: float, floor: float, *, need_harmonic: bool
) -> np.ndarray | None:
    """Sub-pixel lattice vector from the peaks at k·vector (k = 1, 2, ...), least squares.

    With `need_harmonic`, the peak at 2·vector must be there when it fits (a grid repeats; a
    lone peak is chance texture) and the answer is None otherwise.
    """
    centre = acf.shape[0] // 2
    search = max(1, round(0.15 * np.hypot(*vector)))
    found: list[tuple[int, np.ndarray]] = []
    for k in range(1, 5):
        guess = k * (vector if not found else _fit(found))
        if np.hypot(*guess) > max_lag - 1:
            break
        position = _peak_near(acf, guess + centre, search, floor)
        if position is None:
            break
        found.append((k, position - centre))
    if not found:
        return None
    fits_twice = 2 * np.hypot(*vector) <= max_lag - 1
    if need_harmonic and fits_twice and len(found) < 2:
        return None
    return _fit(found)


def _fit(found: list[tuple[int, np.ndarray]]) -> np.ndarray:
    ks = np.array([k for k, _ in found], dtype=np.float64)
    points = np.stack([p for _, p in found])
    return (ks[:, None] * points).sum(axis=0) / (ks**2).sum()


def _peak_near(acf: np.ndarray, guess: np.ndarray, search: int, floor: float) -> np.ndarray | None:
    """Sub-pixel position of the maximum within `search` px of `guess`, if it is a real peak."""
    cy, cx = round(guess[0]), round(guess[1])
    y0, y1 = max(cy - search, 1), min(cy + search + 1, acf.shape[0] - 1)
    x0, x1 = max(cx - search, 1), min(cx + search + 1, acf.shape[1] - 1)
    if y1 <= y0 or x1 <= x0:
        return None
    patch = acf[y0:y1, x0:x1]
    iy, ix = np.unravel_index(int(np.argmax(patch)), patch.shape)
    py, px = y0 + iy, x0 + ix
    if acf[py, px] < floor or (py in (y0, y1 - 1) and y0 > 1) or (px in (x0, x1 - 1) and x0 > 1):
        return None  # too weak, or the maximum is on the search border (a slope, not a peak)
    dy = _parabola(acf[py - 1 : py + 2, px])
    dx = _parabola(acf[py, px - 1 : px + 2])
    return np.array([py + dy, px + dx])


def _parabola(values: np.ndarray) -> float:
    """Offset of the vertex of a parabola through three samples at -1, 0, 1 (clamped)."""
    left, middle, right = (float(v) for v in values)
    curvature = left - 2 * middle + right
    if curvature >= 0:
        return 0.0
    return float(np.clip(0.5 * (left - right) / curvature, -0.5, 0.5))


# Auto scale: shrink only grids with a pitch >= 1.5 x TARGET_PITCH_PX, and never below it, i.e.
# only marks beyond the 8-60 px the model is trained on (pitch <= ~3.3 mark sizes). Within that
# range full resolution is best: on 14 unseen slides with 35-60 px marks the shipped model's
# pooled Dice is 0.922 at scale 1, 0.918 / 0.912 / 0.898 at 0.8 / 0.67 / 0.5
# (benchmarks/scale_rule.py --network); the earlier 80-px target shrank grids from 120 px on.
TARGET_PITCH_PX = 160.0
_SCALE_STEP = 0.5  # scale = 1 / k with k = 1, 1.5, 2, 2.5, ...: few distinct, reproducible sizes
# A user-given scale may also enlarge (e.g. 1.5 sharpens outlines of marks under ~15 px at
# 2.25x the network time). The default auto scale never does, to keep prediction fast
# (predict_image enlarges only for a second look: when a grid shows but no marks were found,
# or when a grid of small marks came out with uncertain outlines).
# MAX_SCALE (pipeline.py) caps it: beyond 2x, 8 px marks are 16+ px, and time and memory grow
# as scale².
#
# The accurate policy (SegmentOptions.accurate, `--accurate`) trades time for outlines: it
# enlarges grids with a pitch under SMALL_PITCH_PX (marks under ~20-35 px) by SMALL_MARK_SCALE.
# Pooled Dice of the shipped model (frs11) on four 48-slide unseen sets (seeds 600000+,
# 700000+, 800000+, 900000+): 0.9241 / 0.9443 / 0.9426 / 0.9471 at full resolution, 0.9336 /
# 0.9492 / 0.9497 / 0.9510 enlarged 1.5x, 0.9356 / 0.9512 / 0.9515 / 0.9515 enlarged 2x (4x the
# network time on those slides; BENCHMARKS.md, session 18). Enlarging every slide, large faint
# marks included, scores lower (frs8 at 1.5x: 0.9291 / 0.9495 / - / 0.9509). Cut-offs of 50-80
# px scored within 0.0005 of 60 on the 1.5x policy, on the sets it was chosen on.
SMALL_PITCH_PX = 60.0
SMALL_MARK_SCALE = MAX_SCALE


def auto_scale(pitch: float | None, *, accurate: bool = False) -> float:
    """Scale factor for an image whose grid pitch is `pitch` px (1.0 when unknown): <= 1, or
    SMALL_MARK_SCALE for a small pitch under the accurate policy."""
    if pitch is None or not np.isfinite(pitch) or pitch <= 0:
        return 1.0
    if accurate and pitch < SMALL_PITCH_PX:
        return SMALL_MARK_SCALE
    divisor = np.floor(pitch / TARGET_PITCH_PX / _SCALE_STEP) * _SCALE_STEP
    return 1.0 if divisor < 1.5 else float(1.0 / divisor)


# --------------------------------------------------------------------------------------------
# Whole images


def scaled_shape(height: int, width: int, scale: float) -> tuple[int, int]:
    """(height, width) of the image the network sees at `scale`."""
    return max(1, round(height * scale)), max(1, round(width * scale))


def count_tiles(shape: tuple[int, int], options: SegmentOptions, scale: float = 1.0) -> int:
    """Number of network tiles `predict_image` runs for an image of `shape` at `scale`."""
    height, width = scaled_shape(shape[0], shape[1], scale)
    return len(plan_tiles(height, width, options.tile_size, options.overlap))


def checked_scale(scale: float) -> float:
    """A user-given scale, or a clear error when it is out of range."""
    if not 0.0 < scale <= MAX_SCALE:
        raise AmsegError(
            f"scale must be in (0, {MAX_SCALE:g}] (1 = full resolution, above 1 enlarges), "
            f"got {scale}"
        )
    return float(scale)


# A second look at small faint marks: when the image has a clear mark grid but the network,
# run at the auto scale, marks less than MISSED_GRID_MASK_FRACTION of it, it runs once more on
# the image enlarged by MISSED_GRID_RETRY_SCALE, and keeps that result if it marks at least
# RETRY_GAIN times as many pixels. A grid of marks covers 1-20 % of a slide; faint 8-10 px
# marks can fall below what the network sees at full resolution (unseen seed 700010: Dice
# 0.02 at scale 1, 0.81 enlarged 1.5x). Of 444 unseen generated slides it fired on that one
# only; the smallest mask share of the others was 1.1 % (benchmarks/model_accuracy.py
# --per-slide). Slides it does not fire on cost nothing.
# A mask under SPARSE_GRID_MASK_FRACTION that holds fewer marks than SPARSE_GRID_NODE_SHARE of
# the grid nodes the pitch implies (image area / pitch²) is the same miss with a few marks
# caught: a fine-tune that marked 0.32 % of seed 700010 in scattered pieces of its marks
# scored 0.14 there without a second look (BENCHMARKS.md, session 14). Marks that were found
# cover more than 1 % of a generated slide (the fewest: 1.1 % of 443 slides), so the count
# is made on few masks.
MISSED_GRID_MASK_FRACTION = 0.002
SPARSE_GRID_MASK_FRACTION = 0.01
SPARSE_GRID_NODE_SHARE = 0.2
MISSED_GRID_RETRY_SCALE = 1.5
RETRY_GAIN = 2.0


def missed_grid_retry_scale(pitch: float | None, scale: float, mask: np.ndarray) -> float | None:
    """The scale to segment again at when a grid was seen but (almost) no marks were found:
    under MISSED_GRID_MASK_FRACTION of the image, or a few marks of a dense grid (see
    SPARSE_GRID_NODE_SHARE). None also after an enlarged pass (the accurate policy's), which
    already looked closer; after that pass ran out of memory, `scale` is the fallback's.
    `pitch` is the image's, in the pixels of `mask`."""
    if pitch is None or scale > 1.0:
        return None
    share = np.count_nonzero(mask) / mask.size
    if share >= MISSED_GRID_MASK_FRACTION:
        if share >= SPARSE_GRID_MASK_FRACTION:
            return None
        marks = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)[0] - 1
        if marks >= SPARSE_GRID_NODE_SHARE * mask.size / pitch**2:
            return None
    retry = min(scale * MISSED_GRID_RETRY_SCALE, MAX_SCALE)
    return retry if retry > scale else None


# A second look at blurred outlines: when a grid of small marks (pitch under SMALL_PITCH_PX)
# was segmented at full resolution and its outlines came out uncertain, i.e. pixels with a
# probability between UNCERTAIN_BAND number UNCERTAIN_OUTLINE_RATIO or more of the marked
# pixels, it segments again enlarged by SMALL_MARK_SCALE and keeps that. Faint or grainy slides
# of small marks are where enlarging pays (+0.01-0.06 Dice on such slides), while crisp slides
# gain 0.000-0.004 for 4x the network time. The ratio was chosen with a 1.5x look on frs11's
# slides 600000+ and 700000+; with the 2x look the four 48-slide sets of the accurate policy's
# comment go 0.9241 / 0.9443 / 0.9426 / 0.9471 -> 0.9351 / 0.9513 / 0.9503 / 0.9500 (a second
# look on 9-16 of 48 slides each; 800000+ was held out of both choices). A slide it fires on
# costs the first pass plus 4x (BENCHMARKS.md, session 18).
UNCERTAIN_BAND = (0.2, 0.8)
UNCERTAIN_OUTLINE_RATIO = 0.5


def outline_uncertainty(probabilities: np.ndarray, mask: np.ndarray) -> float:
    """Pixels with a probability inside UNCERTAIN_BAND per marked pixel (0 without marks)."""
    marked = np.count_nonzero(mask)
    if marked == 0:
        return 0.0
    low, high = UNCERTAIN_BAND
    uncertain = np.count_nonzero((probabilities > low) & (probabilities < high))
    return uncertain / marked


def uncertain_outline_retry_scale(
    pitch: float | None, scale: float, segmentation: Segmentation
) -> float | None:
    """SMALL_MARK_SCALE when a full-resolution pass over a grid of small marks left uncertain
    outlines (see UNCERTAIN_OUTLINE_RATIO), else None."""
    if pitch is None or pitch >= SMALL_PITCH_PX or scale != 1.0:
        return None
    ratio = outline_uncertainty(segmentation.probabilities, segmentation.mask)
    return SMALL_MARK_SCALE if ratio >= UNCERTAIN_OUTLINE_RATIO else None


def options_for(segmenter: Segmenter, options: SegmentOptions) -> SegmentOptions:
    """`options` as `predict_image` runs them with `segmenter`: a GPU segmenter wants more
    tiles per call than the CPU default hands it."""
    runtime = getattr(segmenter, "runtime", None)
    if isinstance(runtime, Runtime) and runtime.batch_size > options.batch_size:
        return dataclasses.replace(options, batch_size=runtime.batch_size)
    return options


def predict_image(
    image: np.ndarray,
    segmenter: Segmenter,
    options: SegmentOptions = SegmentOptions(),
    *,
    scale: float | None = None,
    on_tiles_planned: Callable[[int], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
    on_pass: Callable[[float], None] | None = None,
    on_tile: Callable[[Tile, np.ndarray, np.ndarray], None] | None = None,
) -> Segmentation:
    """Segment an image of any size, optionally resampled first; output has its size.

    `scale` None picks a scale from the grid pitch (`auto_scale`, enlarging small marks when
    `options.accurate`) and takes at most one second look: when small marks came out of a
    full-resolution pass with uncertain outlines, it looks again enlarged and keeps that
    (`uncertain_outline_retry_scale`); otherwise (or when that look runs out of memory), when
    a grid is there but no marks were found, it looks again enlarged
    (`missed_grid_retry_scale`) and keeps that look if it clearly finds more. No look goes
    back to a scale that ran out of memory. A number runs at exactly that scale (1.0 = full
    resolution). Away from 1 the image is resampled (`resample`), segmented with
    `segment_image`, and the probabilities are resized back and thresholded at the input's
    size (the returned `grid` and `window` then describe the resampled image, and `scale`
    says by how much).

    `on_tiles_planned` gets the number of network tiles, again with the new total if a second
    pass is added; `on_pass` gets the scale of each pass before it starts; `on_tile` sees
    every tile of every pass (see `segment_image`); the result's `scale` says which was kept.

    Padding (`find_padding`: a mosaic's border, a rotated image's corners) is background in
    the result and no network tile sees it: the image is cropped to the box around the
    sample, and padding left inside that box is filled with pixels of the sample's own
    intensities. The result's `offset` then says where that box starts, and `grid` describes
    it.
    """
    gray = to_grayscale(image)
    padding = find_padding(gray)
    if padding is None:
        return _predict_gray(
            gray, segmenter, options, scale, on_tiles_planned, on_progress, on_pass, on_tile
        )
    rows, cols = np.flatnonzero(~padding.all(axis=1)), np.flatnonzero(~padding.all(axis=0))
    box = slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)
    sample, inner_padding = gray[box], padding[box]
    if inner_padding.any():
        sample = fill_padding(sample, inner_padding)
    inner = _predict_gray(
        sample, segmenter, options, scale, on_tiles_planned, on_progress, on_pass, on_tile
    )
    probabilities = np.zeros(gray.shape, dtype=np.float32)
    probabilities[box] = inner.probabilities
    probabilities[padding] = 0.0
    mask = np.zeros(gray.shape, dtype=bool)
    mask[box] = inner.mask
    mask = remove_small_components(mask & ~padding, options.min_mark_area)
    return dataclasses.replace(
        inner,
        probabilities=probabilities,
        mask=mask,
        offset=(int(rows[0]), int(cols[0])),
        padding_share=float(np.count_nonzero(padding)) / padding.size,
    )


def _predict_gray(
    gray: np.ndarray,
    segmenter: Segmenter,
    options: SegmentOptions,
    scale: float | None,
    on_tiles_planned: Callable[[int], None] | None,
    on_progress: Callable[[int], None] | None,
    on_pass: Callable[[float], None] | None,
    on_tile: Callable[[Tile, np.ndarray, np.ndarray], None] | None,
) -> Segmentation:
    """`predict_image` of a gray image without padding."""
    pitch = None
    if scale is None:
        pitch = estimate_mark_pitch(gray)
        scale = auto_scale(pitch, accurate=options.accurate)
        fast_scale = auto_scale(pitch)  # where the accurate policy falls back to
    else:
        scale = fast_scale = checked_scale(scale)
    options = options_for(segmenter, options)
    planned = count_tiles(gray.shape, options, scale)
    if on_tiles_planned is not None:
        on_tiles_planned(planned)

    def segment_at(pass_scale: float) -> Segmentation:
        if on_pass is not None:
            on_pass(pass_scale)
        work = resample(gray, pass_scale)
        result = segment_image(work, segmenter, options, on_progress=on_progress, on_tile=on_tile)
        if work is not gray:
            result = restore_segmentation(result, gray.shape, options.min_mark_area)
        return dataclasses.replace(result, scale=pass_scale)

    out_of_memory: set[float] = set()  # scales no second look goes back to
    try:
        segmentation = segment_at(scale)
    except MemoryError:
        if scale == fast_scale:
            raise
        # The accurate policy's enlargement is optional: segment as the default does.
        out_of_memory.add(scale)
        scale = fast_scale
        planned += count_tiles(gray.shape, options, scale)
        if on_tiles_planned is not None:
            on_tiles_planned(planned)
        segmentation = segment_at(scale)
    # The outline look comes first and is kept as it is, also on a pass that marked only a few
    # pixels, all of them uncertain; the missed-grid look (kept only if it finds clearly more)
    # runs when the outline look does not, or ran out of memory.
    sharpen = uncertain_outline_retry_scale(pitch, scale, segmentation)
    if sharpen is not None and sharpen not in out_of_memory:
        planned += count_tiles(gray.shape, options, sharpen)
        if on_tiles_planned is not None:
            on_tiles_planned(planned)
        try:
            return segment_at(sharpen)
        except MemoryError:
            out_of_memory.add(sharpen)  # the enlarged look is optional: keep what was found
    retry = missed_grid_retry_scale(pitch, scale, segmentation.mask)
    if retry is not None and retry not in out_of_memory:
        planned += count_tiles(gray.shape, options, retry)
        if on_tiles_planned is not None:
            on_tiles_planned(planned)
        try:
            second = segment_at(retry)
        except MemoryError:
            return segmentation  # the enlarged look is optional: keep what was found
        # Kept only when it clearly finds more: a small grid whose few marks were found at
        # full resolution stays as it was, and so does an image with no marks at all.
        found, found_again = np.count_nonzero(segmentation.mask), np.count_nonzero(second.mask)
        if found_again > 0 and found_again >= RETRY_GAIN * found:
            segmentation = second
    return segmentation


def resample(gray: np.ndarray, scale: float) -> np.ndarray:
    """`gray` resized by `scale` (area averaging to shrink, bicubic to enlarge); the same
    array when that keeps its size."""
    height, width = gray.shape
    new_height, new_width = scaled_shape(height, width, scale)
    if (new_height, new_width) == (height, width):
        return gray
    enlarging = new_height * new_width > height * width
    return _resize(gray, new_width, new_height, cv2.INTER_CUBIC if enlarging else cv2.INTER_AREA)


def restore_segmentation(
    resampled: Segmentation, shape: tuple[int, int], min_mark_area: int
) -> Segmentation:
    """A segmentation of a resampled image brought back to `shape`: the probabilities are
    resized (linearly when growing, area-averaged when shrinking), then thresholded at the
    input's size (smoother edges than resizing the mask). `grid` and `window` keep describing
    the resampled image."""
    height, width = shape
    growing = height * width > resampled.probabilities.size
    probabilities = cv2.resize(
        resampled.probabilities,
        (width, height),
        interpolation=cv2.INTER_LINEAR if growing else cv2.INTER_AREA,
    )
    np.clip(probabilities, 0.0, 1.0, out=probabilities)
    mask = remove_small_components(probabilities > resampled.threshold, min_mark_area)
    return dataclasses.replace(resampled, probabilities=probabilities, mask=mask)


def _resize(gray: np.ndarray, width: int, height: int, interpolation: int) -> np.ndarray:
    if gray.dtype not in (np.uint8, np.uint16, np.float32, np.float64):
        gray = gray.astype(np.float32)
    return cv2.resize(gray, (width, height), interpolation=interpolation)


# --------------------------------------------------------------------------------------------
# Reduced precision must not change the masks


def reduced_precision_agreement(
    model_dir: Path | str | None,
    images: Iterable[tuple[str, np.ndarray]],
    *,
    precision: str = "bf16",
    backend: str = "auto",
    options: SegmentOptions | None = None,
) -> dict:
    """Mask Dice of `precision` on `backend` against eager fp32, per image and the minimum.

    Only meaningful for trained weights: a random network's logits sit near 0, so tiny
    numeric differences flip many pixels. `ok` is min Dice >= MIN_REDUCED_PRECISION_DICE.
    """
    reference = TorchSegmenter.from_model_dir(model_dir, precision="fp32", backend="torch")
    candidate = TorchSegmenter.from_model_dir(model_dir, precision=precision, backend=backend)
    options = options or SegmentOptions(tile_size=reference.tile_size)
    per_image = {}
    for name, image in images:
        expected = predict_image(image, reference, options, scale=1.0).mask
        got = predict_image(image, candidate, options, scale=1.0).mask
        per_image[name] = dice(expected, got)
    worst = min(per_image.values()) if per_image else 1.0
    return {
        "reference": reference.describe(),
        "candidate": candidate.describe(),
        "per_image": per_image,
        "min_dice": worst,
        "ok": worst >= MIN_REDUCED_PRECISION_DICE,
    }
