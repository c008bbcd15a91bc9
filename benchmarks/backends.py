"""Tile throughput (MP/s) of every inference backend, default vs legacy architecture, one run.

Random weights (weights do not change speed). Backends are timed round-robin, one repetition
of each in turn, so load from other processes hits them alike; medians (of the repetitions
that got their full share of CPU, column "full") are reported, with
ratios to eager fp32 of the same architecture and to the legacy configuration. With --model,
also the mask Dice of each reduced-precision path against eager fp32 on the real crops.

    .venv/bin/python benchmarks/backends.py --reps 7
    .venv/bin/python benchmarks/backends.py --model model/weights/default
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.image.io import read_image
from model.segment.agreement import reduced_precision_agreement
from model.segment.card import LIGHT_DECODER, ModelCard
from model.segment.network import build_from_card, legacy_card
from model.segment.neural import TorchSegmenter
from model.segment.runtime import RuntimeChoice, cpu_supports_bf16
from model.segment.torch_runtime import ProbabilityNet

REAL_CROPS = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"


def eager_plain(card: ModelCard, network: torch.nn.Module) -> Callable[[np.ndarray], np.ndarray]:
    """Eager fp32, NCHW, one tile per call (as the old workers ran): the reference for ratios.

    Every runner here takes one tile per forward: eager CPU runs slower on batches (cache
    pressure), OpenVINO and ONNX Runtime gain nothing from them.
    """
    net = ProbabilityNet(network, card).eval()

    def run(tiles: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return np.concatenate(
                [net(torch.from_numpy(t)[None, None])[:, 0].numpy() for t in tiles]
            )

    return run


def onnxruntime_fp32(
    card: ModelCard, network: torch.nn.Module, tile: int, threads: int
) -> Callable[[np.ndarray], np.ndarray] | None:
    """ONNX Runtime fp32 on an ONNX export of the same graph (only when onnx + ORT exist)."""
    if not (importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("onnx")):
        return None
    import onnxruntime as ort

    net = ProbabilityNet(network, card).eval()
    path = Path(tempfile.mkdtemp(prefix="amseg-bench-")) / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            torch.rand(1, 1, tile, tile),
            str(path),
            opset_version=17,
            dynamo=False,
            input_names=["x"],
            output_names=["p"],
            dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}, "p": {0: "n", 2: "h", 3: "w"}},
        )
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(tiles: np.ndarray) -> np.ndarray:
        return np.concatenate([session.run(None, {"x": t[None, None]})[0][:, 0] for t in tiles])

    return run


def backends_for(
    card: ModelCard, tile: int, threads: int
) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    torch.manual_seed(0)
    network = build_from_card(card).eval()
    runners: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "eager fp32": eager_plain(card, network)
    }
    for label, backend, precision in (
        ("eager fp32 channels_last", "torch", "fp32"),
        ("eager bf16 autocast + CL", "torch", "bf16"),
        ("openvino fp32", "openvino", "fp32"),
        ("openvino bf16", "openvino", "bf16"),
    ):
        if backend == "openvino" and not importlib.util.find_spec("openvino"):
            continue
        segmenter = TorchSegmenter(  # a copy: each backend wraps (and may convert) its own
            _copy(network, card),
            card,
            runtime=RuntimeChoice(
                device="cpu", backend=backend, precision=precision, threads=threads
            ),
        )
        runners[label] = segmenter.predict_batch
    ort_runner = onnxruntime_fp32(card, _copy(network, card), tile, threads)
    if ort_runner is not None:
        runners["onnxruntime fp32"] = ort_runner
    return runners


def _copy(network: torch.nn.Module, card: ModelCard) -> torch.nn.Module:
    clone = build_from_card(card)
    clone.load_state_dict(network.state_dict())
    return clone.eval()


def measure(
    runners: dict[str, Callable[[np.ndarray], np.ndarray]],
    tiles: np.ndarray,
    reps: int,
    threads: int,
) -> dict[str, dict]:
    """Median MP/s per runner, timed round-robin.

    On a shared machine a repetition may not get its cores; the median is taken over the
    repetitions whose CPU time reached 0.85 x threads x wall time ("full share"), or over all
    of them (flagged) when none did.
    """
    reference = None
    results: dict[str, dict] = {}
    for name, run in runners.items():  # warm-up, and agreement with eager fp32
        out = run(tiles)
        if reference is None:
            reference = out
        results[name] = {
            "max_abs_diff": float(np.abs(out - reference).max()),
            "walls": [],
            "cpu": [],
        }
    for _ in range(reps):
        for name, run in runners.items():
            cpu0, wall0 = time.process_time(), time.perf_counter()
            run(tiles)
            wall = time.perf_counter() - wall0
            results[name]["walls"].append(wall)
            results[name]["cpu"].append((time.process_time() - cpu0) / wall)
    megapixels = tiles.size / 1e6
    for record in results.values():
        full = [
            w for w, c in zip(record["walls"], record["cpu"], strict=True) if c >= 0.85 * threads
        ]
        record["full_share"] = len(full)
        record["mp_per_s"] = megapixels / statistics.median(full or record["walls"])
        record["cpu_use"] = statistics.median(record["cpu"])
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--tiles", type=int, default=2, help="tiles per timed call")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument(
        "--encoders",
        default="efficientnet-b0",
        help="comma-separated encoders, each with the light decoder (first = default model)",
    )
    parser.add_argument("--no-legacy", action="store_true", help="skip the legacy ResNeXt-50")
    parser.add_argument("--model", type=Path, help="trained model dir: also report bf16 Dice")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {args.threads} threads, native bf16: {cpu_supports_bf16()}, "
        f"{args.tiles} x {args.tile}² tiles per call, median of {args.reps}"
    )
    cards = [
        (f"{encoder} U-Net, decoder {LIGHT_DECODER}", ModelCard(encoder=encoder))
        for encoder in args.encoders.split(",")
    ]
    if not args.no_legacy:
        cards.append(("legacy resnext50_32x4d U-Net, smp decoder, 3 ch", legacy_card()))
    tiles = np.random.default_rng(0).random((args.tiles, args.tile, args.tile), dtype=np.float32)

    legacy_speed = None
    table = []
    for title, card in cards:
        results = measure(
            backends_for(card, args.tile, args.threads), tiles, args.reps, args.threads
        )
        table.append((title, results))
        if card.encoder == "resnext50_32x4d":
            legacy_speed = results["eager fp32"]["mp_per_s"]
    for title, results in table:
        base = results["eager fp32"]["mp_per_s"]
        print(f"\n{title}")
        print(
            f"  {'backend':28s} {'MP/s':>6s} {'x eager':>8s} {'x legacy':>9s} "
            f"{'CPU use':>8s} {'full':>5s} {'max |Δp|':>9s}"
        )
        for name, record in results.items():
            vs_legacy = f"{record['mp_per_s'] / legacy_speed:8.1f}x" if legacy_speed else ""
            print(
                f"  {name:28s} {record['mp_per_s']:6.2f} {record['mp_per_s'] / base:7.2f}x "
                f"{vs_legacy:>9s} {record['cpu_use']:8.2f} "
                f"{record['full_share']:2d}/{args.reps:<2d} {record['max_abs_diff']:9.1e}"
            )

    if args.model is not None:
        crops = [(p.name, read_image(p)) for p in sorted(REAL_CROPS.glob("*.png"))]
        print(f"\nreduced precision vs eager fp32, mask Dice on {len(crops)} real crops:")
        for backend in ("torch", "openvino"):
            report = reduced_precision_agreement(
                args.model, crops, precision="bf16", backend=backend
            )
            dice = ", ".join(f"{k} {v:.4f}" for k, v in report["per_image"].items())
            verdict = "ok" if report["ok"] else "FAILS (< 0.99)"
            print(f"  {report['candidate']}: {dice} → min {report['min_dice']:.4f} {verdict}")


if __name__ == "__main__":
    main()
