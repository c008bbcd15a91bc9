"""The `amseg` Typer application; command modules attach their commands to it.

User errors (`AmsegError`) raised anywhere in a command become one line on stderr and exit
code 2, without a traceback, whether the CLI runs as `amseg` or inside a test runner.
"""

import sys

import typer
from typer.core import TyperGroup

from model.errors import AmsegError

USER_ERROR_EXIT_CODE = 2


class AmsegGroup(TyperGroup):
    """Reports AmsegError as `error: <message>` and exits 2 instead of showing a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except AmsegError as error:
            message = " ".join(str(error).split())  # always exactly one line
            print(f"error: {message}", file=sys.stderr, flush=True)
            raise typer.Exit(USER_ERROR_EXIT_CODE) from None


app = typer.Typer(
    name="amseg",
    cls=AmsegGroup,
    help=(
        "Find ablation marks in post-MALDI microscopy images, segment them and number them "
        "by their place on the acquisition grid (id = row * cols + col + 1)."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
