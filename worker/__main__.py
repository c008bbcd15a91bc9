"""`python -m worker`: the same as `amseg worker` (used by `amseg up` for its child worker)."""

import typer

from worker.cli import worker

if __name__ == "__main__":
    typer.run(worker)
