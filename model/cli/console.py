"""Terminal output shared by the commands: one stderr console and one style of progress bar."""

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

console = Console(stderr=True, highlight=False)
"""Messages and progress go to stderr, so stdout stays free for what a command prints as data."""


def progress_bar(description: str = "{task.description}", *, transient: bool = True) -> Progress:
    """A bar with description, done/total and elapsed time, drawn on `console`."""
    return Progress(
        TextColumn(description),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=transient,
    )
