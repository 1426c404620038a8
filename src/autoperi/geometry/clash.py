"""Pushing apart atoms that are closer than a minimum distance (a clash), periodically."""

from __future__ import annotations

import itertools

import torch
from torch import Tensor

from autoperi.geometry.graph import dense_graph
from autoperi.geometry.torus import shortest_displacement

# every image within one cell of the shortest fractional offset: enough for pairs closer than
# the cell's smallest height, which is all a clash distance of ~1 Å needs in real cells
_IMAGES = torch.tensor(list(itertools.product((-1, 0, 1), repeat=3)), dtype=torch.float32)


def clash_displacement(frac_coords: Tensor, lattice: Tensor, num_atoms: Tensor,
                       min_distance: float) -> Tensor:
    """Fractional displacement [N, 3] that moves the two atoms of every pair (any periodic
    image) closer than `min_distance` Å apart along their axis, each by half the deficit,
    summed over an atom's pairs. Pairs at min_distance or farther, and exactly coincident
    atoms (no axis to push along), get nothing. lattice [B, 3, 3], rows = basis vectors."""
    b = len(num_atoms)
    crystal_idx = torch.repeat_interleave(torch.arange(b, device=num_atoms.device), num_atoms)
    i, j = dense_graph(num_atoms).edge_index
    pair = i != j
    i, j = i[pair], j[pair]
    images = _IMAGES.to(frac_coords)
    delta = shortest_displacement(frac_coords[j] - frac_coords[i])[:, None] + images  # [E, 27, 3]
    cart = torch.einsum("eki,eij->ekj", delta, lattice[crystal_idx[i]])
    dist = torch.linalg.norm(cart, dim=-1, keepdim=True)
    deficit = (min_distance - dist).clamp(min=0.0)
    axis = torch.where(dist > 0, cart / dist.clamp(min=1e-12), torch.zeros_like(cart))
    # each ordered pair moves atom i away from j by half: the reverse pair moves j
    push = -(0.5 * deficit * axis).sum(1)  # [E, 3] Cartesian
    moved = torch.zeros(len(frac_coords), 3, dtype=cart.dtype, device=cart.device)
    moved = moved.index_add(0, i, push)
    return torch.einsum("ni,nij->nj", moved, torch.linalg.inv(lattice)[crystal_idx])
