"""Make, check and warm the OpenVINO IR shipped with a model (model/segment/shipped_ir.py).

    python -m model.segment.ir_tool build [MODEL_DIR]    # (re)make MODEL_DIR/openvino: needs
                                                         # torch and NNCF (the full install)
    python -m model.segment.ir_tool check [MODEL_DIR]    # load and run it with this OpenVINO
    python -m model.segment.ir_tool prepare [MODEL_DIR]  # load every CPU precision as
                                                         # `amseg predict` would (shipped IR,
                                                         # else the cache, else made into it)

MODEL_DIR defaults to the shipped model. After changing its weights, the graph fields of its
card or the int8 recipe, run `build` (tests/model/segment/test_shipped_ir.py fails until then).
"""

from __future__ import annotations

import sys
from pathlib import Path

from model.errors import AmsegError
from model.segment.card import DEFAULT_MODEL_DIR
from model.segment.neural import TorchSegmenter
from model.segment.runtime import RuntimeChoice, cpu_supports_bf16
from model.segment.shipped_ir import build_shipped_ir, check_shipped_ir


def prepare(model_dir: Path | None) -> list[str]:
    """Load the model for each CPU precision the way `amseg predict` does (shipped IR, else
    the cache, else export/quantize into the cache), so that the first task finds it."""

    precisions = ["fp32", "int8"] + (["bf16"] if cpu_supports_bf16() else [])
    lines = []
    for precision in precisions:
        choice = RuntimeChoice(device="cpu", backend="openvino", precision=precision)
        segmenter = TorchSegmenter.from_model_dir(model_dir, runtime=choice)
        lines.append(f"{precision}: {segmenter.describe()} ({segmenter.ir_source})")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] not in ("build", "check", "prepare") or len(args) > 2:
        print(__doc__, file=sys.stderr)
        return 2
    model_dir = Path(args[1]) if len(args) == 2 else DEFAULT_MODEL_DIR
    try:
        if args[0] == "build":
            print(f"wrote {build_shipped_ir(model_dir)}")
        elif args[0] == "check":
            print("\n".join(check_shipped_ir(model_dir)))
        else:
            print("\n".join(prepare(model_dir)))
    except AmsegError as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
