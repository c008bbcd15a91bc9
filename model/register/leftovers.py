"""Pieces the matching left without a node: fragments, double marks (a displaced fainter copy)
and the spill of split touching marks join the mark they belong to; dust stays out."""

from __future__ import annotations

import numpy as np

from model.register.lattice import MATCH_CUTOFF, Lattice
from model.register.marks import DOUBLE_AREA, MARK_LIKE_AREA, Units
from model.register.touching import SPLIT_OFFSET


def absorb_leftovers(
    units: Units,
    node_of_unit: np.ndarray,
    frac: np.ndarray,
    lattice: Lattice,
    i0: int,
    j0: int,
    rows: int,
    cols: int,
    mark_area: float,
) -> tuple[np.ndarray, int]:
    """Give unmatched pieces the id of the mark they belong to; returns nodes and their count.

    A leftover part of a split component joins its nearest matched sibling (spill of a touching
    pair into an occupied cell). Other leftovers join a matched node nearby when they fit one of
    two kinds of piece: a fragment near its node (both together no bigger than one mark), or
    a double mark, a second copy displaced from its node by the offset that the slide's
    doubles share (estimated from the leftovers themselves, so a double half a pitch away goes
    to its own node, not to the neighbour it is as close to). Anything else (dust, a second
    mark-sized object) stays unmatched.
    """
    node_of_unit = node_of_unit.copy()
    leftovers = np.flatnonzero((node_of_unit < 0) & np.isfinite(frac).all(axis=1))
    if leftovers.size == 0:
        return node_of_unit, 0
    winner = np.full(rows * cols, -1, dtype=np.int64)
    matched = np.flatnonzero(node_of_unit >= 0)
    winner[node_of_unit[matched]] = matched
    node_area = np.zeros(rows * cols, dtype=np.int64)
    np.add.at(node_area, node_of_unit[matched], units.area[matched])
    pieces = leftovers
    # Loose marks: matched, but far from their node (a double that took an empty node).
    own_gap = np.hypot(
        *(units.centroid[matched] - _node_xy(lattice, node_of_unit[matched], i0, j0, cols)).T
    )
    loose = matched[
        (own_gap > SPLIT_OFFSET * lattice.pitch) & (units.area[matched] <= DOUBLE_AREA * mark_area)
    ]
    pool = np.concatenate([pieces[units.area[pieces] >= MARK_LIKE_AREA * mark_area], loose])
    double, spread = _double_offset(units, pool, frac, lattice, winner, i0, j0, rows, cols)
    if double is not None and loose.size:
        # A loose mark at the shared offset from a marked node is that mark's double: it
        # gives its node back and becomes a piece.
        _, occupied, delta = _around(units, loose, frac, lattice, winner, i0, j0, rows, cols)
        fit = np.hypot(*(delta - double).transpose(2, 0, 1)) / (2.5 * spread)
        fit = np.where(occupied, fit, np.inf).min(axis=1)
        demoted = loose[fit < 1.0]
        for unit in demoted:
            target = node_of_unit[unit]
            winner[target] = -1
            node_area[target] -= units.area[unit]
            node_of_unit[unit] = -1
        pieces = np.concatenate([pieces, demoted])
        matched = np.flatnonzero(node_of_unit >= 0)
    if pieces.size == 0:
        return node_of_unit, 0
    around = _around(units, pieces, frac, lattice, winner, i0, j0, rows, cols)
    absorbed = _join_nodes(
        units, pieces, around, double, spread, node_of_unit, node_area, lattice.pitch, mark_area
    )
    absorbed += _join_siblings(units, pieces, matched, node_of_unit)
    return node_of_unit, absorbed


def _join_nodes(
    units: Units,
    pieces: np.ndarray,
    around: tuple[np.ndarray, np.ndarray, np.ndarray],
    double: np.ndarray | None,
    spread: float,
    node_of_unit: np.ndarray,
    node_area: np.ndarray,
    pitch: float,
    mark_area: float,
) -> int:
    """Pieces join the marked node around them they fit best, best fits first, while the node
    has room; updates `node_of_unit` and `node_area` and returns how many joined.

    `around` is what `_around` says of the pieces; `double` and `spread` the offset that double
    marks share (None when there is none) and its spread.
    """
    node, occupied, delta = around
    # Scores below 1 accept: a fragment within MATCH_CUTOFF of its node, a double within
    # 2.5 spreads of the shared offset.
    fragment_score = np.hypot(*delta.transpose(2, 0, 1)) / (MATCH_CUTOFF * pitch)
    double_score = np.full_like(fragment_score, np.inf)
    if double is not None:
        double_score = np.hypot(*(delta - double).transpose(2, 0, 1)) / (2.5 * spread)
    score = np.where(occupied, np.minimum(fragment_score, double_score), np.inf)
    best = np.argmin(score, axis=1)
    rows_index = np.arange(pieces.size)
    best_score = score[rows_index, best]
    as_double = double_score[rows_index, best] < fragment_score[rows_index, best]
    joined = 0
    for k in np.argsort(best_score, kind="stable"):
        if not best_score[k] < 1.0:
            break
        unit, target = int(pieces[k]), int(node[k, best[k]])
        area = units.area[unit]
        if as_double[k]:
            fits = (
                area <= DOUBLE_AREA * mark_area
                and node_area[target] + area <= (1.6 + DOUBLE_AREA) * mark_area
            )
        else:
            fits = node_area[target] + area <= 1.6 * mark_area
        if fits:
            node_of_unit[unit] = target
            node_area[target] += area
            joined += 1
    return joined


def _join_siblings(
    units: Units, pieces: np.ndarray, matched: np.ndarray, node_of_unit: np.ndarray
) -> int:
    """A part of a split component that fits no node joins its nearest sibling among the
    `matched` units (the spill of a touching pair into an occupied cell); updates
    `node_of_unit` and returns how many joined."""
    joined = 0
    for unit in pieces[(node_of_unit[pieces] < 0) & (units.parent[pieces] >= 0)]:
        siblings = matched[units.parent[matched] == units.parent[unit]]
        if siblings.size:
            gap = np.hypot(*(units.centroid[siblings] - units.centroid[unit]).T)
            node_of_unit[unit] = node_of_unit[siblings[np.argmin(gap)]]
            joined += 1
    return joined


def _node_xy(lattice: Lattice, node: np.ndarray, i0: int, j0: int, cols: int) -> np.ndarray:
    """(x, y) of grid nodes given as row * cols + col."""
    ji = np.column_stack([node % cols + j0, node // cols + i0]).astype(np.float64)
    return lattice.position(ji)


def _around(
    units: Units,
    which: np.ndarray,
    frac: np.ndarray,
    lattice: Lattice,
    winner: np.ndarray,
    i0: int,
    j0: int,
    rows: int,
    cols: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each unit in `which`, its nearest node and the eight around it: node numbers
    (row * cols + col), whether a mark other than the unit itself holds the node, and the
    unit's offset (pixels) from each node. Shapes (n, 9), (n, 9), (n, 9, 2)."""
    steps = np.array([(dj, di) for di in (-1.0, 0.0, 1.0) for dj in (-1.0, 0.0, 1.0)])
    candidate = np.rint(frac[which])[:, None, :] + steps[None, :, :]
    position = lattice.position(candidate.reshape(-1, 2)).reshape(candidate.shape)
    delta = units.centroid[which][:, None, :] - position
    row = (candidate[..., 1] - i0).astype(np.int64)
    col = (candidate[..., 0] - j0).astype(np.int64)
    inside = (row >= 0) & (row < rows) & (col >= 0) & (col < cols)
    node = np.where(inside, row * cols + col, 0)
    holder = winner[node]
    occupied = inside & (holder >= 0) & (holder != which[:, None])
    return node, occupied, delta


def _double_offset(
    units: Units,
    pool: np.ndarray,
    frac: np.ndarray,
    lattice: Lattice,
    winner: np.ndarray,
    i0: int,
    j0: int,
    rows: int,
    cols: int,
) -> tuple[np.ndarray | None, float]:
    """The offset (pixels) that double marks share from their node, and its spread.

    Double marks (a fainter copy of the mark a fixed step away, stage or laser artefact) all
    sit at about the same place relative to their own mark. Every mark-like object in `pool`
    votes for its offset from each marked node around it; the true offset collects a vote
    from every double, whereas the same place seen from the neighbouring node only collects
    the votes of doubles whose neighbour has a mark (edges, missing marks). This settles
    doubles half a pitch away. None when no offset stands out, when it lies at the node
    (fragments) or at a cell corner (no node can be told from the others).
    """
    if pool.size < 3:
        return None, 0.0
    _, occupied, delta = _around(units, pool, frac, lattice, winner, i0, j0, rows, cols)
    inverse = np.linalg.inv(lattice.matrix)
    in_cells = delta @ inverse.T
    keep = occupied & np.all(np.abs(in_cells) <= 0.75, axis=2)
    offsets, cells = delta[keep], in_cells[keep]
    if offsets.shape[0] < 3:
        return None, 0.0
    offsets, cells = offsets[:: -(-offsets.shape[0] // 3000)], cells[:: -(-cells.shape[0] // 3000)]
    gap = offsets[:, None, :] - offsets[None, :, :]
    near = np.hypot(gap[..., 0], gap[..., 1]) < 0.1 * lattice.pitch
    votes = near.sum(axis=1)
    seed = int(np.lexsort((np.hypot(*offsets.T), -votes))[0])
    if votes[seed] < max(5, 0.3 * pool.size):
        return None, 0.0
    members = near[seed]
    centre = cells[members].mean(axis=0)
    if np.all((np.abs(centre) >= 0.4) & (np.abs(centre) <= 0.6)):
        return None, 0.0
    offset = offsets[members].mean(axis=0)
    if np.hypot(*offset) < 0.2 * lattice.pitch:
        return None, 0.0
    spread = float(np.sqrt(np.mean(np.sum((offsets[members] - offset) ** 2, axis=1))))
    return offset, max(spread, 0.05 * lattice.pitch)
