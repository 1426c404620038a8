"""Pushing apart atoms that are closer than a minimum distance (a clash), periodically."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import Tensor

from autoperi.geometry.graph import dense_graph
from autoperi.geometry.torus import shortest_displacement, wrap

# every image within one cell of the shortest fractional offset: enough for pairs closer than
# the cell's smallest height, which is all a clash distance of ~1 Å needs in real cells
_IMAGES = torch.tensor(list(itertools.product((-1, 0, 1), repeat=3)), dtype=torch.float32)


@dataclass(frozen=True)
class ClashFloor:
    """The shortest contact sampling allows, from flow time `after` on: atoms i, j closer
    than max(distance, scale * (r_i + r_j)) Å, r the covalent radii, are pushed apart.
    `distance` suits datasets whose shortest contacts are alike (Perov-5: 1.35 Å at the
    0.1st percentile); `scale` suits element-specific ones (MP-20: H-H at 0.75 Å, O-H at
    0.97 Å, median 2.48 Å; bench/contacts.py measures both). 0 turns a floor off."""

    distance: float = 0.0
    scale: float = 0.0
    after: float = 0.5

    def __post_init__(self):
        if self.distance < 0 or self.scale < 0 or not 0.0 <= self.after <= 1.0:
            raise ValueError(f"need clash distance >= 0, clash scale >= 0 and clash after in "
                             f"[0, 1], got {self.distance}, {self.scale}, {self.after}")

    @property
    def active(self) -> bool:
        return self.distance > 0 or self.scale > 0


def clash_displacement(frac_coords: Tensor, lattice: Tensor, num_atoms: Tensor,
                       min_distance: float = 0.0, radii: Tensor | None = None) -> Tensor:
    """Fractional displacement [N, 3] that moves the two atoms of every pair (any periodic
    image) closer than its floor apart along their axis, each by half the deficit, summed
    over an atom's pairs. A pair's floor is max(min_distance, radii_i + radii_j) Å (radii:
    per-atom contact radii [N], optional). Pairs at their floor or farther, and exactly
    coincident atoms (no axis to push along), get nothing. lattice [B, 3, 3], rows = basis
    vectors."""
    b = len(num_atoms)
    crystal_idx = torch.repeat_interleave(torch.arange(b, device=num_atoms.device), num_atoms)
    i, j = dense_graph(num_atoms).edge_index
    pair = i != j
    i, j = i[pair], j[pair]
    images = _IMAGES.to(frac_coords)
    delta = shortest_displacement(frac_coords[j] - frac_coords[i])[:, None] + images  # [E, 27, 3]
    cart = torch.einsum("eki,eij->ekj", delta, lattice[crystal_idx[i]])
    dist = torch.linalg.norm(cart, dim=-1, keepdim=True)
    floor = torch.full((len(i), 1, 1), float(min_distance), dtype=dist.dtype, device=dist.device)
    if radii is not None:
        floor = torch.maximum(floor, (radii[i] + radii[j]).to(dist)[:, None, None])
    deficit = (floor - dist).clamp(min=0.0)
    axis = torch.where(dist > 0, cart / dist.clamp(min=1e-12), torch.zeros_like(cart))
    # each ordered pair moves atom i away from j by half: the reverse pair moves j
    push = -(0.5 * deficit * axis).sum(1)  # [E, 3] Cartesian
    moved = torch.zeros(len(frac_coords), 3, dtype=cart.dtype, device=cart.device)
    moved = moved.index_add(0, i, push)
    return torch.einsum("ni,nij->nj", moved, torch.linalg.inv(lattice)[crystal_idx])


def resolve_clashes(frac_coords: Tensor, lattice: Tensor, num_atoms: Tensor,
                    min_distance: float = 0.0, radii: Tensor | None = None,
                    passes: int = 5) -> Tensor:
    """Fractional coordinates after up to `passes` clash pushes (`clash_displacement`),
    wrapped into [0, 1): one pass resolves isolated pairs exactly, pairs pushed into third
    atoms need a few more; stops early once nothing moves."""
    for _ in range(passes):
        push = clash_displacement(frac_coords, lattice, num_atoms, min_distance, radii)
        if not bool(push.any()):
            break
        frac_coords = wrap(frac_coords + push)
    return frac_coords
