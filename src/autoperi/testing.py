"""Helpers for tests of AutoPeri and of models built on it: canonical crystals, random
batches and invariance assertions (one line per symmetry in a model's test)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from pymatgen.core import Lattice, Structure
from torch import Tensor

from autoperi.data.crystal import CrystalBatch
from autoperi.geometry.torus import wrap


def canonical_crystals() -> dict[str, Structure]:
    """Textbook crystals with known neighbour shells (lattice constants in Å)."""
    return {
        "fcc_Cu": Structure(Lattice.cubic(3.61), ["Cu"] * 4,
                            [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]),
        "bcc_Fe": Structure(Lattice.cubic(2.87), ["Fe"] * 2, [[0, 0, 0], [0.5, 0.5, 0.5]]),
        "rocksalt_NaCl": Structure.from_spacegroup(
            "Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
        "diamond_C": Structure.from_spacegroup(
            "Fd-3m", Lattice.cubic(3.567), ["C"], [[0, 0, 0]]),
        "perovskite_SrTiO3": Structure(
            Lattice.cubic(3.905), ["Sr", "Ti", "O", "O", "O"],
            [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]),
        "hcp_Mg": Structure(Lattice.hexagonal(3.21, 5.21), ["Mg"] * 2,
                            [[1 / 3, 2 / 3, 0.25], [2 / 3, 1 / 3, 0.75]]),
    }


def random_batch(num_crystals: int = 4, max_atoms: int = 6, seed: int = 0,
                 dtype: torch.dtype = torch.float64) -> CrystalBatch:
    """Random crystals with well-conditioned cells (for invariance tests, not physics)."""
    g = torch.Generator().manual_seed(seed)
    num_atoms = torch.randint(1, max_atoms + 1, (num_crystals,), generator=g)
    n = int(num_atoms.sum())
    shear = 0.3 * torch.randn(num_crystals, 3, 3, generator=g, dtype=dtype)
    lattice = 4.0 * (torch.eye(3, dtype=dtype) + shear)
    lattice = torch.where(torch.linalg.det(lattice)[:, None, None] < 0, -lattice, lattice)
    return CrystalBatch(
        atomic_numbers=torch.randint(1, 84, (n,), generator=g),
        frac_coords=torch.rand(n, 3, generator=g, dtype=dtype),
        lattice=lattice,
        num_atoms=num_atoms,
    )


def random_rotation(seed: int = 0, dtype: torch.dtype = torch.float64) -> Tensor:
    """A random proper rotation matrix [3, 3]."""
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=dtype))
    q = q * torch.sign(torch.diagonal(r))
    return q if torch.linalg.det(q) > 0 else -q


def rotate(batch: CrystalBatch, rotation: Tensor) -> CrystalBatch:
    """The same crystals rotated in space (frac coords unchanged): rows of L go to L R^T."""
    return batch.replace(lattice=batch.lattice @ rotation.T.to(batch.lattice.dtype))


def translate(batch: CrystalBatch, shift: Tensor) -> CrystalBatch:
    """All atoms of each crystal shifted by the fractional vector shift [B, 3], wrapped."""
    moved = batch.frac_coords + shift.to(batch.frac_coords.dtype)[batch.crystal_idx]
    return batch.replace(frac_coords=wrap(moved))


def shift_images(batch: CrystalBatch, seed: int = 0) -> CrystalBatch:
    """Each atom moved by a random integer lattice vector (the same crystal, unwrapped)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(-2, 3, batch.frac_coords.shape, generator=g)
    return batch.replace(frac_coords=batch.frac_coords + images.to(batch.frac_coords.dtype))


def permute(batch: CrystalBatch, seed: int = 0) -> tuple[CrystalBatch, Tensor]:
    """Atoms permuted within each crystal; returns (batch, perm) with new[k] = old[perm[k]]."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.cat([
        start + torch.randperm(n, generator=g)
        for start, n in zip((torch.cumsum(batch.num_atoms, 0) - batch.num_atoms).tolist(),
                            batch.num_atoms.tolist())
    ])
    return batch.replace(atomic_numbers=batch.atomic_numbers[perm],
                         frac_coords=batch.frac_coords[perm]), perm


def assert_invariant(fn: Callable[[CrystalBatch], Tensor], batch: CrystalBatch,
                     transformed: CrystalBatch, atol: float = 1e-6) -> None:
    """fn gives the same crystal-level output on both batches."""
    a, b = fn(batch), fn(transformed)
    if not torch.allclose(a, b, atol=atol):
        raise AssertionError(f"not invariant: max difference {float((a - b).abs().max()):.3g}")


def sorted_edge_lengths(batch: CrystalBatch, cutoff: float) -> list[np.ndarray]:
    """Per-crystal sorted edge lengths: a fingerprint invariant to every symmetry of the
    representation (rotation, translation, permutation, image shifts, cell choice)."""
    from autoperi.geometry.graph import edge_lengths

    graph = batch.graph(cutoff)
    lengths = edge_lengths(batch.frac_coords, batch.lattice, batch.crystal_idx, graph)
    owner = batch.crystal_idx[graph.edge_index[1]]
    return [np.sort(lengths[owner == b].detach().numpy()) for b in range(len(batch))]
