"""Which data atom each prior atom flows to: an optimal-transport coupling per crystal.

With independent pairing (atom i of the noise goes to atom i of the data) paths cross and
the learned velocity is an average over many possible assignments; two atoms can end on
one site. The data are unchanged by permuting atoms of one species and by a common
translation, so we may choose both per training crystal: the permutation and shift that
minimise the total squared torus displacement from the noise (the idea of equivariant OT
flow matching, Klein et al. 2023, on the torus). The prior stays uniform and the data
distribution stays the translated data, so the flow still maps prior to data; only the
paths between them become shorter and less ambiguous.

Cost is the mean-removed one, because the velocity loss ignores a common translation
(`flow.paths.remove_mean`). Shifts are searched from anchors (no shift, and one noise atom
of the rarest group put on each of the first MAX_ANCHORS data atoms of that group): the
assignment is solved (scipy's Hungarian method), the shift moved to the mean displacement
and the assignment solved again.
A local search, not a global optimum; its cost is never above the squared displacement of
the best unshifted pairing (each refinement lowers the squared displacement, and the
mean-removed cost is lower still). The returned shift is the one refined after the last
solve, whose mean-removed cost is the one compared.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from autoperi.geometry.torus import wrap

FORBIDDEN = 1e6  # cost of pairing atoms of different groups
MAX_ANCHORS = 8  # shifts tried per crystal besides none: the cost grows with anchors x n^3


def ot_coupling(x0: Tensor, x1: Tensor, num_atoms: Tensor, groups: Tensor
                ) -> tuple[Tensor, Tensor]:
    """Pairing of noise x0 [N, 3] with data x1 [N, 3] (fractional), per crystal.

    groups [N]: atoms may only be paired within a group (e.g. the species, when the types
    are given; one group when types are generated with the atom). Returns perm [N] (global
    indices into x1) and shift [B, 3] such that noise atom i flows to
    wrap(x1[perm[i]] + shift[crystal of i]).
    """
    a = x0.detach().cpu().double().numpy()
    b = x1.detach().cpu().double().numpy()
    g = groups.detach().cpu().numpy()
    perm = np.arange(len(a))
    shifts = np.zeros((len(num_atoms), 3))
    start = 0
    for c, n in enumerate(num_atoms.tolist()):
        sl = slice(start, start + n)
        local, shifts[c] = _match_one(a[sl], b[sl], g[sl])
        perm[sl] = start + local
        start += n
    return (torch.as_tensor(perm, device=x1.device),
            torch.as_tensor(shifts, dtype=x1.dtype, device=x1.device))


def coupled_targets(x0: Tensor, x1: Tensor, types: Tensor, num_atoms: Tensor,
                    types_given: Tensor, symmetry: tuple[Tensor, Tensor] | None = None
                    ) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor] | None]:
    """The data side of a training batch re-paired with the noise x0 [N, 3] (`ot_coupling`):
    positions x1 [N, 3] and type indices [N] permuted together and each crystal shifted;
    atoms of crystals with types_given [N] (CSP) pair only within their species, the others
    across all atoms. symmetry (ops [M, 3, 4], counts [B]) of the crystals is moved to the
    shifted frame. Returns (x1, types, symmetry) in the noise's atom order."""
    groups = torch.where(types_given, types, -1)
    perm, shift = ot_coupling(x0, x1, num_atoms, groups)
    crystal_idx = torch.repeat_interleave(torch.arange(len(num_atoms), device=x1.device),
                                          num_atoms.to(x1.device))
    if symmetry is not None:
        ops, counts = symmetry
        symmetry = (shift_operations(ops.to(x1.device), counts.to(x1.device), shift), counts)
    return wrap(x1[perm] + shift[crystal_idx]), types[perm], symmetry


def coupling_cost(x0: Tensor, x1: Tensor) -> Tensor:
    """Mean-removed squared torus displacement from x0 to x1 [n, 3] of one crystal."""
    d = x1 - x0
    d = d - torch.floor(d + 0.5)
    return ((d - d.mean(0)) ** 2).sum()


def _match_one(a: np.ndarray, b: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    values, counts = np.unique(g, return_counts=True)
    rare = values[np.argmin(counts)]
    mismatch = np.where(g[:, None] == g[None, :], 0.0, FORBIDDEN)
    best = (np.inf, np.arange(len(a)), np.zeros(3))
    anchors = np.flatnonzero(g == rare)[:MAX_ANCHORS]  # noise atom anchors[0] on data atom j
    for shift in [np.zeros(3)] + [a[anchors[0]] - b[j] for j in anchors]:
        for _ in range(2):  # solve, move the shift to the mean displacement, solve again
            disp = _torus(b[None, :, :] + shift - a[:, None, :])  # [i, j, 3]
            cols = linear_sum_assignment((disp ** 2).sum(-1) + mismatch)[1]
            paired = disp[np.arange(len(a)), cols]
            shift = shift - paired.mean(0)
        cost = ((paired - paired.mean(0)) ** 2).sum()
        if cost < best[0]:
            best = (cost, cols, shift)
    return best[1], _torus(best[2])


def _torus(d: np.ndarray) -> np.ndarray:
    return d - np.floor(d + 0.5)


def shift_operations(ops: Tensor, op_counts: Tensor, shift: Tensor) -> Tensor:
    """Space-group operations (R | t) [M, 3, 4] of crystals [B] (op_counts ops each) in the
    frame translated by shift [B, 3]: x + s -> R x + t + s, i.e. t' = t + s - R s."""
    s = torch.repeat_interleave(shift.to(ops.dtype), op_counts.to(shift.device), dim=0)
    rot = ops[:, :, :3]
    moved = ops[:, :, 3] + s - (rot @ s[:, :, None]).squeeze(-1)
    return torch.cat([rot, moved[:, :, None]], dim=-1)
