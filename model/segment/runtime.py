"""Where the network runs: device, backend, precision, threads and batch, and the OpenVINO export.

`RuntimeChoice` is what a user asks for (each field may be "auto"); `resolve_runtime` turns it
into a concrete `Runtime` for this machine, or explains why it cannot.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from model.errors import AmsegError
from model.segment.card import CARD_FILE, WEIGHTS_FILE, ModelCard

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")
BACKENDS = ("auto", "torch", "openvino")

# A reduced-precision path must give the same masks as fp32 on real crops (Dice >= this).
MIN_REDUCED_PRECISION_DICE = 0.99
# Model-card metric written by whoever validated bf16 on a trained model; a value below
# MIN_REDUCED_PRECISION_DICE makes precision="auto" stay in fp32 for that model.
BF16_DICE_METRIC = "bf16_mask_dice"
# The int8 check (benchmarks/int8_check.py --write): mask Dice of int8 vs fp32 on the real
# crops (>= MIN_REDUCED_PRECISION_DICE), and how far int8's pooled Dice on generated slides
# falls below fp32's (<= MAX_INT8_DICE_DROP). precision="auto" picks int8 only for a model
# whose card records both, passed: quantization is calibrated, not exact.
INT8_DICE_METRIC = "int8_mask_dice"
INT8_DICE_DROP_METRIC = "int8_dice_drop"
MAX_INT8_DICE_DROP = 0.005

# Eager CPU runs slower on batches than on single tiles (cache pressure; measured in
# benchmarks/backends.py), OpenVINO is indifferent; a GPU needs batches to be kept busy.
CPU_BATCH_SIZE = 1
CUDA_BATCH_SIZE = 16

EXPORT_VERSION = "1"  # bump when the exported graph changes (normalization, output)
# The card's fields the exported graph depends on (model/segment/network.py builds the net
# from them, torch_runtime.ProbabilityNet normalizes with them), and the tile size, which the
# int8 calibration tiles are cut at. Metrics, threshold and history are left out: recording a
# check in the card keeps the export (and a shipped IR) valid.
EXPORT_CARD_FIELDS = (
    "architecture",
    "encoder",
    "decoder_channels",
    "in_channels",
    "full_res_skip",
    "input_mean",
    "input_std",
    "tile_size",
)


@dataclasses.dataclass(frozen=True)
class RuntimeChoice:
    """What the user asked for; "auto" and None are decided by `resolve_runtime`."""

    device: str = "auto"
    precision: str = "auto"
    backend: str = "auto"
    threads: int | None = None
    batch_size: int | None = None


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


# The CPU features that decide which precision is fast (benchmarks print them).
SPEED_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def cpu_description() -> str:
    """The CPU's model name and which of SPEED_FLAGS it has, for benchmark reports."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    names = [line.split(":", 1)[1].strip() for line in text.splitlines() if "model name" in line]
    flags = _cpu_flags()
    has = " ".join(f"{flag}{'+' if flag in flags else '-'}" for flag in SPEED_FLAGS)
    return f"{names[0] if names else 'unknown CPU'}, {default_threads()} usable cores ({has})"


@functools.cache
def cpu_supports_bf16() -> bool:
    """True when the CPU computes bf16 natively (AVX512-BF16 or AMX); emulated bf16 is slower."""
    flags = _cpu_flags()
    if flags:
        return bool(flags & {"avx512_bf16", "amx_bf16"})
    # No /proc/cpuinfo (not Linux): torch reports AMX-capable CPUs by capability name.
    if not torch_available():
        return False
    from model.segment.torch_runtime import cpu_capability

    return "AMX" in cpu_capability().upper()


@functools.cache
def cpu_int8_faster() -> bool:
    """True where OpenVINO runs int8 convolutions faster than fp32: x86 with AVX2 integer dot
    products or better (VNNI, AMX). Elsewhere (Arm, unknown) int8 is not chosen by itself."""
    return bool(_cpu_flags() & {"avx2", "avx512_vnni", "avx_vnni", "amx_int8"})


def int8_check_passed(metrics: dict | None) -> bool:
    """Whether the model card records a passed int8 check (both parts, see INT8_DICE_METRIC)."""
    metrics = metrics or {}
    dice, drop = metrics.get(INT8_DICE_METRIC), metrics.get(INT8_DICE_DROP_METRIC)
    if dice is None or drop is None:
        return False
    return float(dice) >= MIN_REDUCED_PRECISION_DICE and float(drop) <= MAX_INT8_DICE_DROP


def nncf_available() -> bool:
    """Whether NNCF, which quantizes the export to int8 once, is installed."""
    return importlib.util.find_spec("nncf") is not None


# The extra that brings PyTorch (training, fine-tuning, the GPU, exporting a model whose
# OpenVINO IR is neither shipped nor cached); the lean install leaves it out.
TORCH_EXTRA = "torch"


def torch_available() -> bool:
    """Whether PyTorch and segmentation-models-pytorch are installed (not the lean install)."""
    return all(
        importlib.util.find_spec(name) is not None
        for name in ("torch", "segmentation_models_pytorch")
    )


def require_torch(what: str) -> None:
    """A one-line error naming what to install when `what` needs PyTorch and it is missing."""
    if not torch_available():
        raise AmsegError(
            f"{what} needs PyTorch, which this install of amseg leaves out; install it with: "
            f"pip install 'amseg[{TORCH_EXTRA}]' (in a source checkout: pip install -e "
            f"'.[{TORCH_EXTRA}]')"
        )


@functools.cache
def cuda_available() -> bool:
    """Whether torch sees a CUDA GPU; without an NVIDIA driver on Linux, torch is not imported."""
    if sys.platform == "linux" and not Path("/proc/driver/nvidia/version").exists():
        return False
    if not torch_available():
        return False
    from model.segment.torch_runtime import cuda_available as torch_cuda_available

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

    def as_choice(self) -> RuntimeChoice:
        """This runtime as a choice with nothing left to decide."""
        return RuntimeChoice(
            self.device, self.precision, self.backend, self.threads, self.batch_size
        )


def resolve_runtime(
    choice: RuntimeChoice = RuntimeChoice(),
    metrics: dict | None = None,
    *,
    int8_shipped: bool = False,
) -> Runtime:
    """Turn the user's choice (each field may be "auto") into a concrete runtime, or explain
    why not. `metrics` are the model card's; a recorded failed bf16 check keeps "auto" in fp32.
    `int8_shipped`: the model directory ships its int8 IR, so int8 needs no NNCF here.
    """
    device, precision, backend = choice.device, choice.precision, choice.backend
    threads, batch_size = choice.threads, choice.batch_size
    for value, allowed, what in (
        (device, DEVICES, "device"),
        (precision, PRECISIONS, "precision"),
        (backend, BACKENDS, "backend"),
    ):
        if value not in allowed:
            raise AmsegError(f"unknown {what} {value!r}; choose one of {', '.join(allowed)}")
    if device == "auto":
        device = "cuda" if cuda_available() else "cpu"
    elif device == "cuda":
        require_torch("--device cuda")
        if not cuda_available():
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
            from model.segment.torch_runtime import cuda_bf16_supported

            precision = "bf16" if cuda_bf16_supported() else "fp16"
        else:
            precision = _auto_cpu_precision(backend, metrics, int8_shipped)
    elif precision == "fp16" and device == "cpu":
        raise AmsegError("fp16 is a GPU precision; on the CPU use int8, bf16 or fp32")
    elif precision == "int8" and backend != "openvino":
        raise AmsegError(
            "int8 runs through OpenVINO on the CPU only (pip install openvino; --device cpu, "
            "--backend openvino)"
        )

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


def _auto_cpu_precision(backend: str, metrics: dict | None, int8_shipped: bool = False) -> str:
    """The fastest CPU precision that passed its check: int8 where the CPU runs it faster than
    fp32 and the card records a passed int8 check (OpenVINO, with the int8 IR shipped or NNCF
    to make it); else bf16 where the CPU has it natively and the card does not veto it; else
    fp32. int8 comes before bf16: with VNNI (which every AVX512-BF16 CPU has) it was 1.3x bf16
    whole process (BENCHMARKS.md, "Prediction speed"), and its check holds it to the same
    agreement with fp32 as bf16's."""
    if (
        backend == "openvino"
        and cpu_int8_faster()
        and int8_check_passed(metrics)
        and (int8_shipped or nncf_available())
    ):
        return "int8"
    bf16_dice = (metrics or {}).get(BF16_DICE_METRIC)
    bf16_vetoed = bf16_dice is not None and float(bf16_dice) < MIN_REDUCED_PRECISION_DICE
    if cpu_supports_bf16() and not bf16_vetoed:
        return "bf16"
    return "fp32"


# --------------------------------------------------------------------------------------------
# OpenVINO: export (and quantize) once per weights, cached on disk


def cache_root() -> Path:
    """Where exported models are kept: $AMSEG_CACHE_DIR, else $XDG_CACHE_HOME/amseg."""
    if os.environ.get("AMSEG_CACHE_DIR"):
        return Path(os.environ["AMSEG_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "amseg"


def directory_fingerprint(directory: Path) -> str:
    """Hash of what a model directory's export is made from: its weights and the card's
    EXPORT_CARD_FIELDS (export cache key and shipped IR check; no torch needed)."""
    digest = hashlib.sha256()
    with (directory / WEIGHTS_FILE).open("rb") as handle:
        digest.update(hashlib.file_digest(handle, "sha256").digest())
    try:
        card = ModelCard.from_json((directory / CARD_FILE).read_text())
    except (OSError, ValueError, TypeError) as error:
        raise AmsegError(f"{directory / CARD_FILE}: unreadable model card ({error})") from error
    fields = {name: getattr(card, name) for name in EXPORT_CARD_FIELDS}
    digest.update(json.dumps(fields, sort_keys=True).encode())
    return digest.hexdigest()[:24]


def package_version(name: str) -> str:
    """An installed distribution's version ("none" when it is not installed)."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "none"


def openvino_version() -> str:
    import openvino as ov

    return ov.__version__.split("-")[0]


def int8_key() -> str:
    """What an int8 IR was made by: the calibration recipe (model/segment/quantize.py) and
    NNCF's version, which decides the quantization as much as the recipe does."""
    from model.segment.int8_recipe import int8_recipe_key

    return f"{int8_recipe_key()}-nncf{package_version('nncf')}"


def export_path(fingerprint: str, precision: str = "fp32") -> Path:
    """The cached IR a precision compiles: the fp32 export (bf16 too: a compile-time hint),
    or for int8 its quantized copy in a folder next to it."""
    quantized = f"-q{int8_key()}" if precision == "int8" else ""
    name = f"{fingerprint}-e{EXPORT_VERSION}{quantized}-ov{openvino_version()}"
    return cache_root() / "openvino" / name / "model.xml"


def is_cached(xml: Path) -> bool:
    return xml.is_file() and xml.with_suffix(".bin").is_file()


def ensure_openvino_export(xml: Path, make_net: Callable[[], Any]) -> Path:
    """Export (once, atomically: concurrent workers may race) unless `xml` is cached."""
    if is_cached(xml):
        return xml
    require_torch("exporting the network to OpenVINO (not shipped with this model, not cached)")
    from model.segment.torch_runtime import export_openvino

    return ensure_cached_ir(xml, lambda staged: export_openvino(make_net(), staged))


def ensure_cached_ir(xml: Path, write: Callable[[Path], None]) -> Path:
    """`write(path)` the IR into a private folder, then move that folder into place as
    `xml`'s: atomic, so concurrent workers never see half an IR, and the first one wins."""
    if is_cached(xml):
        return xml
    target = xml.parent
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the cache may be shared by workers
    try:
        write(staging / xml.name)
        try:
            os.replace(staging, target)  # atomic; fails if another process got there first
        except OSError:
            if not xml.is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return xml


class OpenVinoRunner:
    """OpenVINO on the CPU, compiled from an IR, cached or shipped (probabilities out, like
    ProbabilityNet). `compiled_dir`: where OpenVINO keeps the compiled network (default: a
    folder beside a cached IR; a shipped IR's lies in the package, so its caller names one
    under the cache)."""

    def __init__(self, xml: Path, runtime: Runtime, compiled_dir: Path | None = None) -> None:
        import openvino as ov

        core = ov.Core()
        config = {
            # int8: the quantized layers run in int8, the few kept in fp32 (quantize.py) in f32
            "INFERENCE_PRECISION_HINT": "bf16" if runtime.precision == "bf16" else "f32",
            "INFERENCE_NUM_THREADS": runtime.threads,
            "PERFORMANCE_HINT": "LATENCY",  # one stream using every thread: one tile at a time
        }
        compiled_dir = compiled_dir or xml.parent / "compiled"
        with contextlib.suppress(OSError):
            compiled_dir.parent.mkdir(parents=True, exist_ok=True)
        if os.access(compiled_dir.parent, os.W_OK):
            # OpenVINO keeps the compiled network there, keyed by these settings and its
            # version: later processes load it (0.06-0.12 s on a 2-core CPU) instead of
            # compiling it (0.15-0.18 s). A damaged or half-written file is detected,
            # compiled afresh and replaced.
            config["CACHE_DIR"] = str(compiled_dir)
        self.compiled = core.compile_model(str(xml), "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.lock = threading.Lock()  # one infer request: calls from threads must take turns

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(batch[:, None], dtype=np.float32)
        with self.lock:
            result = self.request.infer({0: x})
            return np.array(result[0][:, 0], dtype=np.float32, copy=True)
