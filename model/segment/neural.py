"""The trained U-Net as a `Segmenter`: tiles in, probabilities out, on the chosen runtime."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from model.errors import AmsegError
from model.segment.card import DEFAULT_MODEL_DIR, WEIGHTS_FILE, ModelCard, read_card
from model.segment.runtime import (
    OpenVinoRunner,
    Runtime,
    RuntimeChoice,
    directory_fingerprint,
    ensure_openvino_export,
    export_path,
    is_cached,
    require_torch,
    resolve_runtime,
)
from model.segment.shipped_ir import compiled_cache_dir, shipped_ir

if TYPE_CHECKING:
    import torch

    from model.segment.device_pipeline import DevicePipeline

log = logging.getLogger(__name__)

# torch and segmentation-models-pytorch take ~4 s to import; a process whose OpenVINO IR is
# shipped with the model or cached never needs them, so `network` and `torch_runtime` load on
# demand (and need not be installed: the lean install).


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
        runtime: RuntimeChoice = RuntimeChoice(),
        model_dir: Path | None = None,
    ) -> None:
        from model.segment import torch_runtime

        resolved = resolve_runtime(runtime, card.metrics)
        self._setup(resolved, card, model_dir)
        net = torch_runtime.ProbabilityNet(network.float().cpu().eval(), card).eval()
        if resolved.backend == "openvino":
            fingerprint = (
                directory_fingerprint(model_dir)
                if model_dir is not None
                else torch_runtime.state_fingerprint(network, card)
            )
            xml = _openvino_ir(fingerprint, resolved.precision, card.tile_size, lambda: net)
            self._run = OpenVinoRunner(xml, resolved)
            self.ir_source = f"cached IR {xml.parent.name}"
        else:
            if resolved.device == "cpu":
                torch_runtime.set_threads(resolved.threads)
            self._run = torch_runtime.TorchRunner(net, resolved.device, resolved.precision)

    def _setup(self, runtime: Runtime, card: ModelCard, model_dir: Path | None) -> None:
        self.runtime = runtime
        self.card = card
        self.encoder = card.encoder
        self.name = f"unet-{card.encoder}"
        self.threshold = float(card.threshold)
        self.tile_size = int(card.tile_size)
        self.model_dir = model_dir
        # Where the network came from: the shipped or cached OpenVINO IR, or torch.
        self.ir_source = "torch"
        self._run: Callable[[np.ndarray], np.ndarray]

    @classmethod
    def from_model_dir(
        cls,
        path: Path | str | None = None,
        *,
        runtime: RuntimeChoice = RuntimeChoice(),
    ) -> TorchSegmenter:
        """Load a model directory (default: the model shipped with amseg)."""
        directory = Path(path) if path is not None else DEFAULT_MODEL_DIR
        if path is None and not (directory / WEIGHTS_FILE).is_file():
            raise AmsegError(
                f"no trained default model in {directory}; pass a model directory with "
                "--model DIR (or use the classical segmenter where a command offers it)"
            )
        card = read_card(directory)
        fingerprint = directory_fingerprint(directory)
        int8_shipped = shipped_ir(directory, "int8", fingerprint) is not None
        resolved = resolve_runtime(runtime, card.metrics, int8_shipped=int8_shipped)
        if resolved.backend == "openvino":
            segmenter = cls.__new__(cls)
            segmenter._setup(resolved, card, directory)
            if segmenter._load_ir(directory, fingerprint):
                return segmenter
        require_torch(
            f"--backend torch ({resolved.describe()})"
            if resolved.backend == "torch"
            else f"{directory}: its OpenVINO IR is neither shipped with it nor cached, and "
            "exporting it"
        )
        from model.segment.network import load_model

        network, card = load_model(directory, device="cpu")
        return cls(network, card, runtime=resolved.as_choice(), model_dir=directory)

    def _load_ir(self, directory: Path, fingerprint: str) -> bool:
        """Run the IR shipped with the model directory, else the cached one, when there is
        one; False when neither is (the caller exports). A shipped IR that the installed
        OpenVINO cannot read or compile is passed over, with a warning."""
        precision = self.runtime.precision
        shipped = shipped_ir(directory, precision, fingerprint)
        if shipped is not None:
            try:
                compiled = compiled_cache_dir(fingerprint, precision)
                self._run = OpenVinoRunner(shipped, self.runtime, compiled_dir=compiled)
            except Exception as error:  # e.g. an OpenVINO that no longer reads this IR
                log.warning("the shipped %s IR of %s does not load here (%s: %s); using the "
                            "cache or making it", precision, directory, type(error).__name__,
                            error)  # fmt: skip
            else:
                self.ir_source = f"shipped IR {shipped.parent}"
                return True
        cached = export_path(fingerprint, precision)
        if is_cached(cached):
            self._run = OpenVinoRunner(cached, self.runtime)
            self.ir_source = f"cached IR {cached.parent.name}"
            return True
        return False

    def describe(self) -> str:
        """One line for logs: model, backend, precision, device, and where the network came
        from (the shipped or cached IR, or torch)."""
        where = f" from {self.model_dir}" if self.model_dir is not None else ""
        return f"{self.encoder} U-Net{where} via {self.runtime.describe()}, {self.ir_source}"

    def device_pipeline(self) -> DevicePipeline | None:
        """The whole-image pass on the network's torch device where it is on
        (`device_pipeline.pipeline_enabled`: on a GPU by default); None on OpenVINO."""
        if isinstance(self._run, OpenVinoRunner):
            return None
        from model.segment.device_pipeline import DevicePipeline, pipeline_enabled

        if not pipeline_enabled(self._run.device):
            return None
        if getattr(self, "_pipeline", None) is None:  # one per segmenter: it keeps warm-up
            self._pipeline = DevicePipeline(self._run, self.runtime.batch_size, self.threshold)
        return self._pipeline

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


def _openvino_ir(
    fingerprint: str, precision: str, tile_size: int, make_net: Callable[[], torch.nn.Module]
) -> Path:
    """The IR `precision` compiles, made once: the fp32 export, or for int8 its quantized copy
    (which needs the fp32 export only when it is not cached itself)."""
    fp32 = functools.partial(ensure_openvino_export, export_path(fingerprint), make_net)
    if precision != "int8":
        return fp32()
    from model.segment.quantize import ensure_int8_export

    return ensure_int8_export(export_path(fingerprint, "int8"), fp32, tile_size)


@functools.lru_cache(maxsize=4)
def _cached_segmenter(path: Path, runtime: RuntimeChoice) -> TorchSegmenter:
    return TorchSegmenter.from_model_dir(path, runtime=runtime)


def default_model_available() -> bool:
    """Whether the default model directory holds weights (a source checkout without them may
    fall back to the classical segmenter)."""
    return (DEFAULT_MODEL_DIR / WEIGHTS_FILE).is_file()


def get_segmenter(
    path: Path | str | None = None,
    *,
    runtime: RuntimeChoice = RuntimeChoice(),
) -> TorchSegmenter:
    """The segmenter for a model directory, loaded once per process (for long-lived workers)."""
    if path is None:
        directory = DEFAULT_MODEL_DIR
        if not (directory / WEIGHTS_FILE).is_file():
            return TorchSegmenter.from_model_dir(None)  # raises the clear "no default" error
    else:
        directory = Path(path)
    return _cached_segmenter(directory.resolve(), runtime)
