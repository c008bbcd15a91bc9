"""amseg: segment MALDI ablation marks in microscopy images and number them on the acquisition grid.

`model` is a pure library (arrays and paths in, arrays and plain records out): no web, queue or
database code lives here. The `amseg` command line in `model.cli` is a thin caller of it.
"""

__version__ = "0.1.0"
