"""Which grid node each mark gets: the rows x cols window of the lattice that the grid covers
(the anchor), then a one-to-one matching of marks to the nodes inside it."""

from __future__ import annotations

import numpy as np
from scipy import sparse
from scipy.optimize import linear_sum_assignment
from scipy.sparse.csgraph import connected_components

from model.errors import RegistrationError
from model.register.lattice import MATCH_CUTOFF, Lattice
from model.register.records import KnownNode


def anchor(
    marks: np.ndarray, anything: np.ndarray, rows: int, cols: int
) -> tuple[int, int, str | None]:
    """Top-left lattice index (i0, j0) of the rows x cols window holding the most marks.

    `marks` and `anything` are (n, 2) integer (j, i) node indices of mark-like clusters and of
    all clusters near a node. Ties are broken by the small clusters, then by preferring the
    window whose first row/column is the first occupied one; a tie in mark count is reported.
    """
    primary = marks if marks.shape[0] else anything
    if primary.shape[0] == 0:
        raise RegistrationError("no mark lies on the fitted lattice")
    j_min, i_min = primary.min(axis=0).astype(np.int64)
    i_base = int(min(i_min, anything[:, 1].min())) - (rows - 1)
    j_base = int(min(j_min, anything[:, 0].min())) - (cols - 1)
    i_top = int(max(primary[:, 1].max(), anything[:, 1].max()))
    j_top = int(max(primary[:, 0].max(), anything[:, 0].max()))
    shape = (i_top - i_base + rows, j_top - j_base + cols)

    def window_counts(nodes: np.ndarray) -> np.ndarray:
        occupied = np.zeros(shape, dtype=np.int64)
        unique = np.unique(nodes.astype(np.int64), axis=0)
        occupied[unique[:, 1] - i_base, unique[:, 0] - j_base] = 1
        summed = np.zeros((shape[0] + 1, shape[1] + 1), dtype=np.int64)
        summed[1:, 1:] = occupied.cumsum(axis=0).cumsum(axis=1)
        # counts[a, b] = marks in occupied[a:a+rows, b:b+cols]
        return (
            summed[rows:, cols:]
            - summed[:-rows, cols:]
            - summed[rows:, :-cols]
            + summed[:-rows, :-cols]
        )

    counts = window_counts(primary)
    secondary = window_counts(anything)
    tops = np.arange(counts.shape[0]) + i_base
    lefts = np.arange(counts.shape[1]) + j_base
    best = counts == counts.max()
    tie_rows, tie_cols = np.nonzero(best)
    key = np.lexsort(
        (
            np.abs(lefts[tie_cols] - j_min),
            np.abs(tops[tie_rows] - i_min),
            -secondary[tie_rows, tie_cols],
        )
    )
    chosen = key[0]
    i0, j0 = int(tops[tie_rows[chosen]]), int(lefts[tie_cols[chosen]])
    note = None
    if tie_rows.size > 1:
        ambiguous_rows = np.unique(tie_rows).size > 1
        ambiguous_cols = np.unique(tie_cols).size > 1
        what = " and ".join(
            w for w, flag in (("rows", ambiguous_rows), ("columns", ambiguous_cols)) if flag
        )
        span_i = int(primary[:, 1].max() - i_min + 1)
        span_j = int(primary[:, 0].max() - j_min + 1)
        note = (
            f"ambiguous anchoring of the {what}: the marks span {span_i} rows x {span_j} "
            f"columns of the {rows}x{cols} grid, so {tie_rows.size} placements fit equally well; "
            "ids assume the first occupied row/column is row/column 0 (check the overlay)"
        )
    return i0, j0, note


def anchor_at(known: KnownNode, lattice: Lattice, rows: int, cols: int) -> tuple[int, int]:
    """Top-left lattice index (i0, j0) that puts the lattice node at a known mark on the grid
    place a person gave it. RegistrationError when that place is off the grid or the point is
    not near a node of the fitted lattice."""
    if int(known.row) != known.row or int(known.col) != known.col:
        raise RegistrationError(
            f"the known mark's row and column must be whole numbers, got {known.row}, {known.col}"
        )
    if not (0 <= known.row < rows and 0 <= known.col < cols):
        raise RegistrationError(
            f"the known mark's place (row {known.row}, column {known.col}) is off the "
            f"{rows}x{cols} grid: rows go from 0 to {rows - 1} and columns from 0 to "
            f"{cols - 1} (0-based, as in ams.csv)"
        )
    point = np.array([[known.x, known.y]], dtype=np.float64)
    if not np.isfinite(point).all():
        raise RegistrationError(f"the known mark's position ({known.x}, {known.y}) is not a number")
    node = np.rint(lattice.fractional(point))
    gap = float(np.hypot(*(point - lattice.position(node))[0]))
    if gap >= MATCH_CUTOFF * lattice.pitch:
        raise RegistrationError(
            f"the known mark at x={known.x:.0f}, y={known.y:.0f} is {gap:.0f} px from the "
            f"nearest node of the grid fitted to the marks (pitch {lattice.pitch:.0f} px): "
            "give the centre of a mark"
        )
    j, i = node[0]
    return int(i) - int(known.row), int(j) - int(known.col)


def assign(
    centroid: np.ndarray,
    frac: np.ndarray,
    lattice: Lattice,
    i0: int,
    j0: int,
    rows: int,
    cols: int,
) -> np.ndarray:
    """One-to-one unit -> node (row * cols + col, or -1) by distance with a cutoff."""
    n = centroid.shape[0]
    finite = np.isfinite(frac).all(axis=1)
    candidate = lattice.candidates(np.where(finite[:, None], centroid, 0.0))  # (n, k, 2)
    position = lattice.position(candidate.reshape(-1, 2)).reshape(candidate.shape)
    distance = np.hypot(*(position - centroid[:, None, :]).transpose(2, 0, 1))
    row = candidate[..., 1] - i0
    col = candidate[..., 0] - j0
    valid = (
        finite[:, None]
        & (row >= 0)
        & (row < rows)
        & (col >= 0)
        & (col < cols)
        & (distance < MATCH_CUTOFF * lattice.pitch)
    )
    unit_index, slot = np.nonzero(valid)
    node = (row[unit_index, slot] * cols + col[unit_index, slot]).astype(np.int64)
    cost = distance[unit_index, slot]
    node_of_unit = np.full(n, -1, dtype=np.int64)
    if unit_index.size == 0:
        return node_of_unit

    unit_degree = np.bincount(unit_index, minlength=n)
    node_degree = np.bincount(node, minlength=rows * cols)
    simple = (unit_degree[unit_index] == 1) & (node_degree[node] == 1)
    node_of_unit[unit_index[simple]] = node[simple]

    # Contested edges: solve each connected conflict group with the Hungarian algorithm.
    hard = ~simple
    if hard.any():
        hu, hn, hc = unit_index[hard], node[hard], cost[hard]
        unit_keys, hu_local = np.unique(hu, return_inverse=True)
        node_keys, hn_local = np.unique(hn, return_inverse=True)
        nu = unit_keys.size
        graph = sparse.coo_matrix(
            (np.ones(hu.size), (hu_local, hn_local + nu)),
            shape=(nu + node_keys.size, nu + node_keys.size),
        )
        _, group = connected_components(graph, directed=False)
        edge_group = group[hu_local]
        for g in np.unique(edge_group):
            sel = edge_group == g
            us, u_inv = np.unique(hu_local[sel], return_inverse=True)
            ns, n_inv = np.unique(hn_local[sel], return_inverse=True)
            matrix = np.full((us.size, ns.size), 1e9)
            matrix[u_inv, n_inv] = hc[sel]
            r, c = linear_sum_assignment(matrix)
            ok = matrix[r, c] < 1e9
            node_of_unit[unit_keys[us[r[ok]]]] = node_keys[ns[c[ok]]]
    return node_of_unit
