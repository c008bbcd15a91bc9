"""Id accuracy of `register_marks` on generated grids with known ids (every grid must reach 99.5 %).

.venv/bin/python benchmarks/registration_accuracy.py [--grids 20] [--seed 0] [--source synth]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere: import model and tests

from model.register.registration import register_marks  # noqa: E402
from tests.model.grid_masks import GridSpec, id_accuracy, make_grid_mask  # noqa: E402

TARGET = 0.995


def generated_case(index: int, seed: int) -> tuple[str, np.ndarray, np.ndarray, int, int]:
    """A grid with every defect: rotation, missing marks/row/column, fragments, touching pairs,
    crescents, specks, dust and marks cut by the border."""
    rng = np.random.default_rng(seed * 1000 + index)
    rows, cols = int(rng.integers(15, 41)), int(rng.integers(15, 41))
    pitch_x = float(rng.uniform(22, 60))
    spec = GridSpec(
        rows=rows,
        cols=cols,
        pitch_x=pitch_x,
        pitch_y=pitch_x * float(rng.uniform(0.85, 1.2)),
        angle_deg=float(rng.uniform(-10, 10)),
        shear=float(rng.uniform(-0.03, 0.03)),
        radius=float(rng.uniform(0.18, 0.33)),
        jitter=float(rng.uniform(0.0, 0.04)),
        missing_fraction=0.05,
        missing_rows=(int(rng.integers(1, rows - 1)),),
        missing_cols=(int(rng.integers(1, cols - 1)),),
        ellipse_fraction=0.15,
        crescent_fraction=0.1,
        fragment_fraction=0.08,
        touching_pairs=max(2, rows * cols // 150),
        specks=rows * cols // 5,
        dust=rows * cols // 60,
        margin=float(rng.uniform(0.0, 0.6)),
        seed=seed * 1000 + index,
    )
    grid = make_grid_mask(spec)
    label = f"{rows}x{cols} {spec.angle_deg:+5.1f}° p{pitch_x:4.1f}"
    return label, grid.mask, grid.labels, rows, cols


def synth_case(index: int, seed: int) -> tuple[str, np.ndarray, np.ndarray, int, int]:
    """A realistic slide from model.synth's ground truth: the grid inside the image, 5 % of the
    marks missing and one interior row and column left out (ids must not shift)."""
    from model.synth.grid import fit_grid_inside
    from model.synth.slide import generate_slide
    from model.synth.styles import random_spec

    case_seed = seed * 1000 + index
    rng = np.random.default_rng(case_seed)
    rows, cols = int(rng.integers(12, 41)), int(rng.integers(12, 41))
    spec = random_spec(
        case_seed,
        height=1536,
        width=1536,
        rows=rows,
        cols=cols,
        angle_deg=float(rng.uniform(-10.0, 10.0)),
        missing_fraction=0.05,
        missing_rows=(int(rng.integers(1, rows - 1)),),
        missing_cols=(int(rng.integers(1, cols - 1)),),
    )
    spec = fit_grid_inside(spec)
    slide = generate_slide(spec, case_seed)
    label = f"{spec.rows}x{spec.cols} {spec.angle_deg:+5.1f}° {spec.shape}"
    return label, slide.mask, slide.labels, spec.rows, spec.cols


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grids", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--source", choices=["generated", "synth"], default="generated")
    args = parser.parse_args()
    make_case = generated_case if args.source == "generated" else synth_case

    print(f"{'#':>3} {'grid':<28} {'marks':>6} {'found':>6} {'accuracy':>9} {'wrong':>6} "
          f"{'ambig':>5} {'time s':>7}")  # fmt: skip
    accuracies: list[float] = []
    clear: list[float] = []  # accuracies of grids whose anchoring was unambiguous
    times: list[float] = []
    for index in range(args.grids):
        label, mask, truth, rows, cols = make_case(index, args.seed)
        start = time.perf_counter()
        try:
            registration = register_marks(mask, rows, cols)
        except Exception as error:  # report and go on: one bad case must not hide the others
            print(f"{index:>3} {label:<28} failed: {error}")
            accuracies.append(0.0)
            continue
        times.append(time.perf_counter() - start)
        score = id_accuracy(registration.labels, truth)
        accuracies.append(score["accuracy"])
        if not registration.qc["ambiguous_anchor"]:
            clear.append(score["accuracy"])
        print(
            f"{index:>3} {label:<28} {score['marks']:>6} {registration.qc['found']:>6} "
            f"{100 * score['accuracy']:>8.2f}% {len(score['wrong_ids']):>6} "
            f"{'yes' if registration.qc['ambiguous_anchor'] else 'no':>5} {times[-1]:>7.3f}"
        )
    worst, median = min(accuracies), float(np.median(accuracies))
    passed = sum(a >= TARGET for a in accuracies)
    print(
        f"{args.source}: {passed}/{len(accuracies)} grids >= {100 * TARGET:.1f} %; id accuracy "
        f"min {100 * worst:.2f} %, median {100 * median:.2f} %; median time "
        f"{np.median(times) if times else float('nan'):.3f} s; unambiguous grids: "
        f"{sum(a >= TARGET for a in clear)}/{len(clear)} >= {100 * TARGET:.1f} %, min "
        f"{100 * min(clear, default=float('nan')):.2f} %"
    )
    return 0 if passed == len(accuracies) else 1


if __name__ == "__main__":
    sys.exit(main())
