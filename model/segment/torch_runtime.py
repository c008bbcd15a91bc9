"""The PyTorch side of `model.inference`: the wrapped network, eager runner and OpenVINO export.

Kept apart so that a process whose OpenVINO export is already cached never imports torch.
"""

from __future__ import annotations

import contextlib
import hashlib
import warnings
from pathlib import Path

import numpy as np
import torch

from model.errors import AmsegError
from model.segment.card import ModelCard


class ProbabilityNet(torch.nn.Module):
    """(N, 1, H, W) gray in [0, 1] → (N, 1, H, W) probabilities: normalization, net, sigmoid.

    Normalization and channel replication live inside the graph so that exported backends
    need no pre-processing of their own and a 3-channel network reads 1 channel of input.
    """

    def __init__(self, network: torch.nn.Module, card: ModelCard) -> None:
        super().__init__()
        self.network = network
        channels = card.in_channels
        mean = _per_channel(card.input_mean, channels, "input_mean")
        std = _per_channel(card.input_std, channels, "input_std")
        if any(s <= 0 for s in std):
            raise AmsegError(f"input_std must be positive, got {card.input_std}")
        scale = torch.tensor([1.0 / s for s in std], dtype=torch.float32).view(1, channels, 1, 1)
        shift = torch.tensor([-m / s for m, s in zip(mean, std, strict=True)]).view_as(scale)
        self.register_buffer("scale", scale, persistent=False)
        self.register_buffer("shift", shift.float(), persistent=False)

    def forward(self, gray: torch.Tensor) -> torch.Tensor:
        x = gray * self.scale + self.shift  # broadcasting replicates gray to every channel
        logits = self.network(x)
        return torch.sigmoid(logits.float())  # probabilities in fp32 even under autocast


def _per_channel(values: tuple[float, ...], channels: int, what: str) -> tuple[float, ...]:
    if len(values) == channels:
        return tuple(values)
    if len(values) == 1:
        return tuple(values) * channels
    raise AmsegError(f"model card {what} has {len(values)} values for {channels} input channels")


def state_fingerprint(network: torch.nn.Module, card: ModelCard) -> str:
    """Hash of in-memory weights and the card (export cache key without a model directory)."""
    digest = hashlib.sha256(card.to_json().encode())
    for name, tensor in sorted(network.state_dict().items()):
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:24]


def set_threads(threads: int) -> None:
    torch.set_num_threads(threads)


def cuda_available() -> bool:
    return torch.cuda.is_available()


def cuda_bf16_supported() -> bool:
    return torch.cuda.is_bf16_supported()


def cpu_capability() -> str:
    return torch.backends.cpu.get_cpu_capability()


class TorchRunner:
    """Eager PyTorch: channels_last, inference mode, optional autocast, pinned GPU transfers.

    `run_tensor` keeps tensors on the device (the device pipeline's way in); calling the
    runner with a numpy batch uploads it and brings the probabilities back.
    """

    def __init__(self, net: ProbabilityNet, device: str, precision: str) -> None:
        self.device = torch.device(device)
        self.net = net.to(self.device).to(memory_format=torch.channels_last).eval()
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # tile shapes repeat: tune convs once

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(batch)[:, None]
        if self.device.type == "cuda":
            # Page-locked host memory lets the copy run asynchronously and at full bus speed.
            x = x.pin_memory().to(self.device, non_blocking=True)
        return self.run_tensor(x).cpu().numpy()

    def run_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, T, T) gray in [0, 1] on the runner's device → (N, T, T) float32
        probabilities, left on the device."""
        x = x.contiguous(memory_format=torch.channels_last)
        autocast = (
            torch.autocast(self.device.type, dtype=self.autocast_dtype)
            if self.autocast_dtype is not None
            else contextlib.nullcontext()
        )
        with torch.inference_mode(), autocast:
            return self.net(x)[:, 0].float()


def export_openvino(net: ProbabilityNet, xml_path: Path) -> None:
    """Convert the wrapped network to OpenVINO IR (fp32 weights, dynamic batch and size)."""
    import openvino as ov

    example = torch.rand(1, 1, 128, 128)
    with warnings.catch_warnings():
        # Conversion traces the module; torch warns that tracing is deprecated.
        warnings.simplefilter("ignore")
        converted = ov.convert_model(
            net.float().cpu().eval(),
            example_input=example,
            input=[ov.PartialShape([-1, 1, -1, -1])],
        )
    # Keep fp32 weights: the default fp16 compression would change fp32 results.
    ov.save_model(converted, str(xml_path), compress_to_fp16=False)
