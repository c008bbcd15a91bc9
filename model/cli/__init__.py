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
from model.cli import finetune as _finetune  # noqa: F401  isort: skip


COMMAND_PLUGINS = "amseg.commands"


def load_command_plugins() -> None:
    """Add the commands other packages register under the `amseg.commands` entry point group
    (the service's `up`, `serve` and `worker`), so `model` never imports web or queue code."""
    from importlib.metadata import entry_points

    for entry_point in entry_points(group=COMMAND_PLUGINS):
        entry_point.load()(app)


def main() -> None:
    """Console-script entry point."""
    load_command_plugins()
    app()


__all__ = ["app", "load_command_plugins", "main"]
