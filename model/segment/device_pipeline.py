"""A network pass over a whole image kept on the network's torch device (a GPU).

On a GPU the network alone segments ~228 MP/s, while the CPU steps around it (normalization,
tile cutting, stitching, resampling, thresholding) held a whole image to ~32 MP/s. Here the
image is uploaded once and every step up to the threshold runs as tensor ops on the device;
only the mask comes back (and the probabilities when a caller needs them). The steps are the
CPU path's (`single_pass.segment_image` between `predict.resample` and
`predict.restore_segmentation`) on tensors: the same percentile window, `plan_tiles` geometry,
reflect padding, `blend_weights` and order of blending, so at scale 1 the probabilities agree
with the CPU path's on the same device to float rounding; resampling follows cv2's INTER_AREA,
INTER_CUBIC and INTER_LINEAR to within a grey level.

The network sees one batch shape only (the last batch is padded with blank tiles), so cuDNN
tunes its kernels once per process; `DevicePipeline.warm_up` runs that first batch before the
first image (a worker at start, `amseg predict` while it reads the image).

`predict.predict_image` uses it where the network runs eagerly on torch on a CUDA device;
AMSEG_DEVICE_PIPELINE=on forces it on the CPU too (what the tests run), off never uses it.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import threading
import warnings
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from model.errors import AmsegError
from model.image.normalize import IntensityWindow, histogram_window, intensity_window
from model.segment.predict import resample, scaled_shape
from model.segment.single_pass import (
    PROBABILITY_DTYPE,
    Segmentation,
    SegmentOptions,
    remove_small_components,
)
from model.segment.tiles import TileGrid, plan_tiles, reflect_indices
from model.segment.torch_runtime import TorchRunner

PIPELINE_ENV = "AMSEG_DEVICE_PIPELINE"
_PIPELINE_SETTINGS = {"auto": None, "on": True, "1": True, "off": False, "0": False}
_PROBABILITY = torch.from_numpy(np.empty(0, dtype=PROBABILITY_DTYPE)).dtype


def pipeline_enabled(device: torch.device) -> bool:
    """Whether the device pipeline runs for a network on `device`: on a GPU unless
    AMSEG_DEVICE_PIPELINE=off, also on the CPU with AMSEG_DEVICE_PIPELINE=on."""
    setting = os.environ.get(PIPELINE_ENV, "").strip().lower() or "auto"
    if setting not in _PIPELINE_SETTINGS:
        raise AmsegError(f"{PIPELINE_ENV} must be auto, on or off, got {setting!r}")
    forced = _PIPELINE_SETTINGS[setting]
    return device.type == "cuda" if forced is None else forced


class DevicePipeline:
    """Normalize, tile, predict, stitch, resample and threshold an image on `runner`'s device,
    `batch_size` tiles per network call (always that many)."""

    def __init__(self, runner: TorchRunner, batch_size: int, threshold: float) -> None:
        self.runner = runner
        self.device = runner.device
        self.batch_size = batch_size
        self.threshold = threshold
        self._warm: set[int] = set()  # tile sizes whose batch shape has run
        self._warm_lock = threading.Lock()  # a warm-up in a thread and the first image take turns

    def segment(
        self,
        gray: np.ndarray,
        scale: float,
        options: SegmentOptions,
        *,
        keep_probabilities: bool = True,
        on_progress: Callable[[int], None] | None = None,
    ) -> Segmentation:
        """`segment_image` of `gray` resampled by `scale`, brought back to `gray`'s size as
        `predict.restore_segmentation` does; `probabilities` is None unless kept. Running out
        of GPU memory raises MemoryError, as the CPU path does (predict_image falls back)."""
        try:
            self.warm_up(options.tile_size)
            with torch.inference_mode():
                return self._segment(gray, scale, options, keep_probabilities, on_progress)
        except torch.OutOfMemoryError as error:
            reason = str(error).splitlines()[0] if str(error) else "out of memory"
        # Raised outside the except block, so that the failed pass's tensors are freed first.
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        raise MemoryError(f"the GPU ran out of memory: {reason}")

    def warm_up(self, tile_size: int) -> bool:
        """Run a one-tile image through the pipeline, once per tile size and process:
        cuDNN tunes its kernels on the first batch of a shape (seconds on a GPU) and the other
        steps load theirs. True when it ran now."""
        with self._warm_lock:
            if tile_size in self._warm:
                return False
            # Every level alike rare: the window comes from the histogram, as on most images.
            ramp = (np.arange(tile_size * tile_size) % 251).astype(np.uint8)
            image = ramp.reshape(tile_size, tile_size)
            with torch.inference_mode():
                self._segment(image, 1.0, SegmentOptions(tile_size=tile_size), False, None)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self._warm.add(tile_size)
            return True

    def warm_up_in_background(self, tile_size: int) -> threading.Thread:
        """`warm_up` in a thread (while an image is read, say); `segment` waits for it."""

        def run() -> None:
            with contextlib.suppress(Exception):  # the image's own pass meets it and says so
                self.warm_up(tile_size)

        thread = threading.Thread(target=run, name="amseg-warm-up", daemon=True)
        thread.start()
        return thread

    def _segment(
        self,
        gray: np.ndarray,
        scale: float,
        options: SegmentOptions,
        keep_probabilities: bool,
        on_progress: Callable[[int], None] | None,
    ) -> Segmentation:
        window, normalized = self._normalized(gray, scale, options)
        grid = plan_tiles(*normalized.shape, options.tile_size, options.overlap)
        # Kept as the CPU path keeps them (PROBABILITY_DTYPE), also between stitch and resize.
        probabilities = self._predict_tiled(normalized, grid, on_progress).to(_PROBABILITY)
        del normalized
        if tuple(probabilities.shape) != gray.shape:
            resized = resize(probabilities.float(), gray.shape, grow="bilinear")
            probabilities = resized.clamp_(0.0, 1.0).to(_PROBABILITY)
        threshold = self.threshold if options.threshold is None else options.threshold
        # numpy compares in the array's precision: the threshold rounded to it
        limit = float(np.asarray(threshold, dtype=PROBABILITY_DTYPE))
        mask = (probabilities > limit).cpu().numpy()
        # The probabilities travel while the host removes small components.
        finish_download = _download_later(probabilities) if keep_probabilities else None
        mask = remove_small_components(mask, options.min_mark_area)
        kept = finish_download() if finish_download is not None else None
        return Segmentation(kept, mask, window, grid, threshold, scale=scale)

    def _normalized(
        self, gray: np.ndarray, scale: float, options: SegmentOptions
    ) -> tuple[IntensityWindow, torch.Tensor]:
        """The window of `gray` at `scale` (as `intensity_window` finds it on the resampled
        image) and that image normalized through it, (H, W) float32 on the device."""
        percentiles = (options.low_percentile, options.high_percentile)
        if gray.dtype not in (np.uint8, np.uint16):
            # Float images: resampled and windowed on the host, as the CPU path does.
            work = resample(gray, scale)
            window = intensity_window(work, *percentiles)
            return window, self._upload(window.apply(work))
        top = int(np.iinfo(gray.dtype).max)
        if gray.dtype == np.uint16:
            # Sent as int16 (torch's uint16 has few kernels), read back unsigned on the device.
            levels = self._upload(gray.view(np.int16)).to(torch.int32).bitwise_and_(top)
        else:
            levels = self._upload(gray).to(torch.int32)
        levels = resample_levels(levels, scaled_shape(*gray.shape, scale), top)
        counts = torch.bincount(levels.reshape(-1), minlength=top + 1).cpu().numpy()
        window = histogram_window(counts, *percentiles)
        if window is None:  # an end level may be padding: only the pixels can tell
            window = intensity_window(levels.cpu().numpy().astype(gray.dtype), *percentiles)
        table = torch.from_numpy(window.lookup_table(gray.dtype)).to(self.device)
        return window, table.index_select(0, levels.reshape(-1)).view(levels.shape)

    def _predict_tiled(
        self,
        normalized: torch.Tensor,
        grid: TileGrid,
        on_progress: Callable[[int], None] | None,
    ) -> torch.Tensor:
        """Blended tile probabilities, (H, W) float32: `tiles.predict_tiled` on the device.

        Weighted sums and weights are added tile by tile in the grid's order, as
        `TileStitcher` adds them, and divided once at the end.
        """
        padded = reflect_pad(normalized, grid)
        size = grid.tile_size
        weights = torch.from_numpy(grid.weights).to(self.device)
        total, weight_sum = torch.zeros_like(padded), torch.zeros_like(padded)
        tiles = list(grid)
        queued: _Fence | None = None
        for start in range(0, len(tiles), self.batch_size):
            batch = tiles[start : start + self.batch_size]
            stack = torch.stack([padded[t.y : t.y + size, t.x : t.x + size] for t in batch])
            if len(batch) < self.batch_size:  # one batch shape: cuDNN tunes once
                blank = stack.new_zeros((self.batch_size - len(batch), size, size))
                stack = torch.cat([stack, blank])
            probabilities = self.runner.run_tensor(stack[:, None])
            for tile, prediction in zip(batch, probabilities[: len(batch)], strict=True):
                region = (slice(tile.y, tile.y + size), slice(tile.x, tile.x + size))
                total[region].add_(prediction * weights)
                weight_sum[region].add_(weights)
            # Progress counts finished batches: wait for the previous one while this one runs.
            queued = _report(queued, _Fence(self.device, len(batch)), on_progress)
        _report(queued, None, on_progress)
        rows = slice(grid.pad_y, grid.pad_y + grid.height)
        cols = slice(grid.pad_x, grid.pad_x + grid.width)
        return total[rows, cols] / weight_sum[rows, cols]

    def _upload(self, array: np.ndarray) -> torch.Tensor:
        """`array` on the device: one copy from page-locked memory on a GPU."""
        with warnings.catch_warnings():
            # A read-only array (a decoded file's) is only read here: no copy is needed.
            warnings.filterwarnings("ignore", "The given NumPy array is not writable")
            host = torch.from_numpy(np.ascontiguousarray(array))
        if self.device.type != "cuda":
            return host
        return host.pin_memory().to(self.device, non_blocking=True)


class _Fence:
    """The work queued so far on the device; `wait` returns once it is done (at once on the
    CPU, which runs each op as it is called)."""

    def __init__(self, device: torch.device, tiles: int) -> None:
        self.tiles = tiles
        self.event = torch.cuda.Event() if device.type == "cuda" else None
        if self.event is not None:
            self.event.record()

    def wait(self) -> None:
        if self.event is not None:
            self.event.synchronize()


def _report(
    previous: _Fence | None, current: _Fence | None, on_progress: Callable[[int], None] | None
) -> _Fence | None:
    """Wait for the `previous` batch, report its tiles, and hand `current` on."""
    if previous is not None:
        previous.wait()
        if on_progress is not None:
            on_progress(previous.tiles)
    return current


def _download_later(tensor: torch.Tensor) -> Callable[[], np.ndarray]:
    """Start copying `tensor` to the host; the returned call waits for it and gives it."""
    if tensor.device.type != "cuda":
        return tensor.numpy
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    host.copy_(tensor, non_blocking=True)
    done = torch.cuda.Event()
    done.record()

    def finish() -> np.ndarray:
        done.synchronize()
        return host.numpy()

    return finish


def reflect_pad(image: torch.Tensor, grid: TileGrid) -> torch.Tensor:
    """The padded canvas that `grid`'s tiles cover, mirrored outside `image` as
    `tiles.extract_tile` mirrors it."""
    height, width = image.shape
    rows = reflect_indices(-grid.pad_y, grid.y_starts[-1] + grid.tile_size - grid.pad_y, height)
    cols = reflect_indices(-grid.pad_x, grid.x_starts[-1] + grid.tile_size - grid.pad_x, width)
    rows_t = torch.from_numpy(rows).to(image.device)
    cols_t = torch.from_numpy(cols).to(image.device)
    return image.index_select(0, rows_t).index_select(1, cols_t)


def resample_levels(levels: torch.Tensor, shape: tuple[int, int], top: int) -> torch.Tensor:
    """An 8/16-bit image as int32 levels resized to `shape` as `predict.resample` resizes it,
    rounded back to levels 0..`top`."""
    if tuple(levels.shape) == tuple(shape):
        return levels
    resized = resize(levels.float(), shape, grow="bicubic")
    if (2 * shape[0], 2 * shape[1]) == tuple(levels.shape):
        resized.add_(0.5).floor_()  # cv2's exact 2x2 averaging rounds halves up
    else:
        resized.round_()  # halves to even, as cv2's saturate_cast
    return resized.clamp_(0, top).to(torch.int32)


def resize(image: torch.Tensor, shape: tuple[int, int], *, grow: str) -> torch.Tensor:
    """(H, W) float32 resized to `shape` as cv2.resize does: INTER_AREA when the pixel count
    shrinks (as `predict.resample` and `predict.restore_segmentation` choose), else `grow`
    ("bicubic": INTER_CUBIC, "bilinear": INTER_LINEAR)."""
    height, width = image.shape
    if (height, width) == tuple(shape):
        return image
    if shape[0] * shape[1] > height * width:
        batch = image[None, None]
        return F.interpolate(batch, size=tuple(shape), mode=grow, align_corners=False)[0, 0]
    image = _apply_taps(image, _area_taps(width, shape[1]), axis=1)
    return _apply_taps(image, _area_taps(height, shape[0]), axis=0)


@functools.lru_cache(maxsize=16)
def _area_taps(source: int, target: int) -> tuple[np.ndarray, np.ndarray]:
    """cv2's INTER_AREA along one axis (computeResizeAreaTab): each target pixel averages the
    source pixels its cell covers, those partly covered by their share. (target, k) source
    indices and weights; unused taps have weight 0."""
    scale = 1.0 / (target / source)  # as cv2 computes it
    taps: list[list[tuple[int, float]]] = []
    for d in range(target):
        start = d * scale
        stop = start + scale
        cell = min(scale, source - start)
        last = min(math.floor(stop), source - 1)
        first = min(math.ceil(start), last)
        row = []
        if first - start > 1e-3:
            row.append((first - 1, (first - start) / cell))
        row += [(s, 1.0 / cell) for s in range(first, last)]
        if stop - last > 1e-3:
            row.append((last, min(stop - last, 1.0, cell) / cell))
        taps.append(row)
    width = max(len(row) for row in taps)
    index = np.zeros((target, width), dtype=np.int64)
    weight = np.zeros((target, width), dtype=np.float32)
    for d, row in enumerate(taps):
        for k, (s, w) in enumerate(row):
            index[d, k], weight[d, k] = s, w
    return index, weight


def _apply_taps(
    image: torch.Tensor, taps: tuple[np.ndarray, np.ndarray], axis: int
) -> torch.Tensor:
    """Weighted sums of `image`'s rows (axis 0) or columns (axis 1) by `taps`."""
    index = torch.from_numpy(taps[0]).to(image.device)
    weight = torch.from_numpy(taps[1]).to(image.device)
    out = None
    for k in range(index.shape[1]):
        w = weight[:, k, None] if axis == 0 else weight[None, :, k]
        part = image.index_select(axis, index[:, k]) * w
        out = part if out is None else out.add_(part)
    return out
