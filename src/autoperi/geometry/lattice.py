"""Lattice matrices (rows a, b, c; cart = frac @ lattice) and their derived quantities."""

import torch
from torch import Tensor


def frac_to_cart(frac_coords: Tensor, lattice: Tensor, crystal_idx: Tensor) -> Tensor:
    """Cartesian positions in Å, [N, 3]. lattice: [B, 3, 3] rows a, b, c."""
    return torch.einsum("ni,nij->nj", frac_coords, lattice[crystal_idx])


def cart_to_frac(cart_coords: Tensor, lattice: Tensor, crystal_idx: Tensor) -> Tensor:
    """Fractional coordinates (not wrapped), [N, 3]."""
    inverse = torch.linalg.inv(lattice)  # [B, 3, 3]
    return torch.einsum("ni,nij->nj", cart_coords, inverse[crystal_idx])


def volume(lattice: Tensor) -> Tensor:
    """Signed cell volume det(L) in Å^3, [B]. Negative for a left-handed basis."""
    return torch.linalg.det(lattice)


def heights(lattice: Tensor) -> Tensor:
    """Perpendicular heights of the cell, [B, 3]: distance between opposite faces.

    heights[:, k] is |V| / |a_l x a_m| for the two other basis vectors; a sphere of radius r
    crosses at most ceil(r / h_k) cell layers along axis k, whatever the cell's skew.
    """
    a, b, c = lattice.unbind(dim=-2)
    cross = torch.stack(
        [torch.linalg.cross(b, c), torch.linalg.cross(c, a), torch.linalg.cross(a, b)], dim=-2
    )  # [B, 3, 3]
    return volume(lattice).abs().unsqueeze(-1) / torch.linalg.norm(cross, dim=-1)


def lattice_cosines(lattice: Tensor) -> Tensor:
    """cos(alpha), cos(beta), cos(gamma) of the cell angles, [B, 3] (no arccos: smooth)."""
    unit = lattice / torch.linalg.norm(lattice, dim=-1, keepdim=True)
    a, b, c = unit.unbind(dim=-2)
    return torch.stack([(b * c).sum(-1), (a * c).sum(-1), (a * b).sum(-1)], dim=-1)


def lattice_to_params(lattice: Tensor) -> tuple[Tensor, Tensor]:
    """Lengths (a, b, c) in Å and angles (alpha, beta, gamma) in radians, each [B, 3]."""
    lengths = torch.linalg.norm(lattice, dim=-1)
    return lengths, torch.arccos(lattice_cosines(lattice).clamp(-1.0, 1.0))


def params_to_lattice(lengths: Tensor, angles: Tensor, min_height: float = 0.0) -> Tensor:
    """Lattice [B, 3, 3] in the standard orientation (a along x, b in the xy plane).

    lengths in Å, angles (alpha, beta, gamma) in radians, each [B, 3]. Inverse of
    `lattice_to_params` up to a rotation. Angles that admit no cell (e.g. alpha + beta <
    gamma) give a flat cell; `min_height` (fraction of c) keeps such cells from collapsing,
    which generators need for finite gradients.
    """
    alpha, beta, gamma = angles.unbind(-1)
    cos_a, cos_b, cos_g = torch.cos(alpha), torch.cos(beta), torch.cos(gamma)
    sin_g = torch.sin(gamma)
    zeros = torch.zeros_like(cos_a)
    cx = cos_b
    cy = (cos_a - cos_b * cos_g) / sin_g
    cz = torch.sqrt((1.0 - cx**2 - cy**2).clamp_min(min_height**2))
    a_vec = torch.stack([torch.ones_like(cos_a), zeros, zeros], -1)
    b_vec = torch.stack([cos_g, sin_g, zeros], -1)
    c_vec = torch.stack([cx, cy, cz], -1)
    unit = torch.stack([a_vec, b_vec, c_vec], dim=-2)  # [B, 3, 3]
    return unit * lengths.unsqueeze(-1)


def reduce_lattice(lattice: Tensor, max_sweeps: int = 100) -> tuple[Tensor, Tensor]:
    """Batched greedy size reduction of the basis (Lagrange-Gauss on every pair of vectors).

    Returns (reduced [B, 3, 3], transform [B, 3, 3] integer) with reduced = transform @ lattice.
    The reduced basis spans the same lattice (det(transform) = 1) and is close to orthogonal,
    so a neighbour search over it needs few images even when the input cell is very skewed.
    Pairwise reduction is weaker than full Minkowski reduction, which a search does not need:
    its image range comes from the cell heights and is exact for any basis.
    """
    reduced = lattice.clone()
    batch = lattice.shape[0]
    eye = torch.eye(3, dtype=lattice.dtype, device=lattice.device)
    transform = eye.expand(batch, 3, 3).clone()
    for _ in range(max_sweeps):
        changed = False
        for k in range(3):
            for other in range(3):
                if k == other:
                    continue
                u, v = reduced[:, k], reduced[:, other]
                mu = torch.round((u * v).sum(-1) / (v * v).sum(-1))  # [B]
                if torch.any(mu != 0):
                    changed = True
                    reduced[:, k] = u - mu.unsqueeze(-1) * v
                    transform[:, k] = transform[:, k] - mu.unsqueeze(-1) * transform[:, other]
        if not changed:
            break
    return reduced, torch.round(transform)


def is_degenerate(lattice: Tensor, min_volume: float = 1e-3) -> Tensor:
    """True where the cell has (near) zero or non-finite volume, [B]."""
    vol = volume(lattice)
    return ~torch.isfinite(vol) | (vol.abs() < min_volume)

