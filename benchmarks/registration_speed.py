"""Time `register_marks` and `write_registration` on a 60x60 grid at 5000x5000 px (median of 5).

.venv/bin/python benchmarks/registration_speed.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere: import model and tests

from model.register.registration import register_marks  # noqa: E402
from model.register.writers import write_registration  # noqa: E402
from tests.model.grid_masks import GridSpec, id_accuracy, make_grid_mask  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    # 60 x 60 marks of ~30 px diameter at an 82 px pitch: a 5000 x 5000 px mask.
    spec = GridSpec(
        rows=60,
        cols=60,
        pitch_x=82.0,
        pitch_y=82.0,
        radius=15.0 / 82.0,
        angle_deg=3.0,
        shear=0.01,
        jitter=0.02,
        missing_fraction=0.05,
        fragment_fraction=0.05,
        touching_pairs=20,
        specks=500,
        margin=0.5,
        seed=1,
    )
    grid = make_grid_mask(spec)
    height, width = grid.mask.shape

    register_times: list[float] = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        registration = register_marks(grid.mask, spec.rows, spec.cols)
        register_times.append(time.perf_counter() - start)
    accuracy = id_accuracy(registration.labels, grid.labels)["accuracy"]

    write_times: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.repeats):
            start = time.perf_counter()
            write_registration(Path(tmp) / str(k), registration)
            write_times.append(time.perf_counter() - start)

    print(f"{'step':<22} {'median s':>9} {'min s':>7} {'max s':>7}")
    for name, values in (("register_marks", register_times), ("write_registration", write_times)):
        print(f"{name:<22} {statistics.median(values):>9.3f} {min(values):>7.3f} "
              f"{max(values):>7.3f}")  # fmt: skip
    print(
        f"{spec.rows}x{spec.cols} grid, {width}x{height} px, {registration.qc['found']} marks "
        f"(accuracy {100 * accuracy:.2f} %): register_marks "
        f"{statistics.median(register_times):.3f} s, write_registration "
        f"{statistics.median(write_times):.3f} s (median of {args.repeats})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
