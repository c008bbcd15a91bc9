"""Command-line interface `amseg`: thin wrappers around the `model` library."""

from model.cli.app import app

# Importing a command module registers its commands on `app`.
from model.cli import synth as _synth  # noqa: F401  isort: skip
from model.cli import register as _register  # noqa: F401  isort: skip
from model.cli import segment as _segment  # noqa: F401  isort: skip
from model.cli import demo as _demo  # noqa: F401  isort: skip
from model.cli import train as _train  # noqa: F401  isort: skip
from model.cli import pseudo_label as _pseudo_label  # noqa: F401  isort: skip
from model.cli import predict as _predict  # noqa: F401  isort: skip


def main() -> None:
    """Console-script entry point."""
    app()


__all__ = ["app", "main"]
