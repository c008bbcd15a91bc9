"""OpenVINO IR shipped inside a model directory, so that a fresh install's first run neither
exports the network (PyTorch, ~9 s + 4 s of imports) nor quantizes it (NNCF, 25-50 s).

A model directory may hold `openvino/` beside its weights and card:

    openvino/manifest.json        what the IRs were made from and by
    openvino/fp32/model.{xml,bin} the export (fp32 and bf16 compile it)
    openvino/int8/model.{xml,bin} its int8 quantization (model/segment/quantize.py); a
                                  fine-tune has it where its check on the labels was
                                  made (model/train/tuned_ir.py)

An IR is used only while the manifest matches the directory: the same fingerprint (weights and
the card's fields the graph depends on: runtime.directory_fingerprint), export version and, for
int8, calibration recipe. The NNCF and OpenVINO versions that made it are recorded, not
required: the shipped int8 IR is the one the card's int8 check measured, whichever NNCF is
installed (or none: the lean install). If the installed OpenVINO cannot read or compile it, the
caller falls back to exporting and quantizing into the cache (model/segment/neural.py).

`python -m model.segment.ir_tool build|check|prepare` makes, checks and warms it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from model.errors import AmsegError
from model.segment.card import read_card
from model.segment.int8_recipe import int8_recipe, int8_recipe_key
from model.segment.runtime import (
    EXPORT_VERSION,
    cache_root,
    directory_fingerprint,
    is_cached,
    openvino_version,
    package_version,
)

SHIPPED_DIR = "openvino"
MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "amseg-openvino-ir/1"
KINDS = ("fp32", "int8")  # bf16 compiles the fp32 IR with a precision hint


def ir_kind(precision: str) -> str:
    return "int8" if precision == "int8" else "fp32"


def read_manifest(model_dir: Path) -> dict | None:
    """The shipped manifest, or None when there is none or it cannot be read."""
    path = model_dir / SHIPPED_DIR / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        return None
    return manifest


def shipped_ir(model_dir: Path, precision: str, fingerprint: str | None = None) -> Path | None:
    """The shipped IR that `precision` compiles, when it was made from this directory's
    weights and card by the current export (and int8 recipe); else None. `fingerprint`:
    runtime.directory_fingerprint(model_dir), when the caller has it already."""
    manifest = read_manifest(model_dir)
    if manifest is None:
        return None
    kind = ir_kind(precision)
    entry = manifest.get("irs", {}).get(kind)
    if not isinstance(entry, dict):
        return None
    fingerprint = fingerprint or directory_fingerprint(model_dir)
    if manifest.get("fingerprint") != fingerprint:
        return None
    if manifest.get("export_version") != EXPORT_VERSION:
        return None
    if kind == "int8" and entry.get("recipe") != int8_recipe_key():
        return None
    xml = model_dir / SHIPPED_DIR / kind / "model.xml"
    if not is_cached(xml):
        return None
    files = entry.get("files", {})
    for path in (xml, xml.with_suffix(".bin")):  # a truncated copy is not used
        if files.get(path.name, {}).get("bytes") != path.stat().st_size:
            return None
    return xml


def compiled_cache_dir(fingerprint: str, precision: str) -> Path:
    """Where OpenVINO keeps the network compiled from a shipped IR (the package may be
    read-only, and is no place for per-machine files)."""
    kind = ir_kind(precision)
    return (
        cache_root() / "openvino" / f"shipped-{fingerprint}-e{EXPORT_VERSION}-{kind}" / "compiled"
    )


def _file_record(path: Path) -> dict:
    with path.open("rb") as handle:
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
    return {"bytes": path.stat().st_size, "sha256": digest}


def build_shipped_ir(model_dir: Path, kinds: tuple[str, ...] = KINDS) -> Path:
    """Export (and for "int8" quantize) `model_dir`'s network into `model_dir/openvino/`
    (replacing it), with its manifest; needs PyTorch, and NNCF for int8. Returns the
    manifest's path."""
    from model.segment.network import load_model
    from model.segment.torch_runtime import ProbabilityNet, export_openvino

    if "fp32" not in kinds:
        raise ValueError("the fp32 IR is what every other is made from: kinds must hold it")
    if "int8" in kinds:
        from model.segment.quantize import require_nncf

        require_nncf()
    model_dir = Path(model_dir)
    network, card = load_model(model_dir)
    staging = Path(tempfile.mkdtemp(prefix=f".{SHIPPED_DIR}.", dir=model_dir))
    try:
        xmls = {kind: staging / kind / "model.xml" for kind in KINDS if kind in kinds}
        for xml in xmls.values():
            xml.parent.mkdir()
        export_openvino(ProbabilityNet(network, card), xmls["fp32"])
        if "int8" in xmls:
            from model.segment.quantize import calibration_tiles, quantize_export

            quantize_export(xmls["fp32"], xmls["int8"], calibration_tiles(card.tile_size))
        irs = {
            kind: {"files": {p.name: _file_record(p) for p in (xml, xml.with_suffix(".bin"))}}
            for kind, xml in xmls.items()
        }
        if "int8" in irs:
            irs["int8"] |= {"recipe": int8_recipe_key(), "recipe_fields": int8_recipe()}
        manifest = {
            "format": MANIFEST_FORMAT,
            "fingerprint": directory_fingerprint(model_dir),
            "export_version": EXPORT_VERSION,
            "made_with": {
                "openvino": openvino_version(),
                "nncf": package_version("nncf"),
                "torch": package_version("torch"),
            },
            "irs": irs,
        }
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
        for path in staging.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)
        staging.chmod(0o755)
        target = model_dir / SHIPPED_DIR
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return model_dir / SHIPPED_DIR / MANIFEST_FILE


def check_shipped_ir(model_dir: Path) -> list[str]:
    """Load, compile and run each shipped IR with the installed OpenVINO; one line each.
    Nothing is written (the compiled network goes to a temporary folder)."""
    import numpy as np

    from model.segment.runtime import OpenVinoRunner, Runtime

    card = read_card(model_dir)
    fingerprint = directory_fingerprint(model_dir)
    shipped = (read_manifest(model_dir) or {}).get("irs", {"fp32": None})  # none: say so below
    lines = []
    for kind in [kind for kind in KINDS if kind in shipped]:
        xml = shipped_ir(model_dir, kind, fingerprint)
        if xml is None:
            raise AmsegError(f"{model_dir}: no {kind} IR shipped for these weights and card")
        with tempfile.TemporaryDirectory() as scratch:
            runtime = Runtime("cpu", "openvino", kind, 1, 1)
            runner = OpenVinoRunner(xml, runtime, compiled_dir=Path(scratch) / "compiled")
            out = runner(np.full((1, card.tile_size, card.tile_size), 0.5, np.float32))
        if out.shape != (1, card.tile_size, card.tile_size) or not np.isfinite(out).all():
            raise AmsegError(f"{xml}: unexpected output {out.shape}")
        lines.append(f"{kind}: {xml} runs on OpenVINO {openvino_version()}")
    return lines
