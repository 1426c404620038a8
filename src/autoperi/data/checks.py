"""Validity checks applied to every structure at the boundary (files, user input).

Each check returns a sentence naming the problem and the atoms involved, so a user can fix
the file; `structure_problems` returns all that apply (empty list: the structure is usable).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from pymatgen.core import DummySpecies, Structure

from autoperi.geometry.graph import edge_lengths, radius_graph


@dataclass(frozen=True)
class Limits:
    """What a usable crystal is. Defaults follow the CDVAE validity definitions."""

    max_atoms: int = 500  # atoms per cell
    min_distance: float = 0.5  # Å; closer atoms overlap
    min_volume: float = 0.1  # Å^3 per cell
    isolation_distance: float = 6.0  # Å; an atom with no neighbour this close is isolated
    max_file_bytes: int = 2 << 30  # a larger file is refused before it is read


def is_finite(structure: Structure) -> bool:
    """True if the lattice and every coordinate are finite (spglib, called on NaN, crashes the
    whole process instead of raising)."""
    return bool(np.isfinite(structure.lattice.matrix).all()
                and np.isfinite(structure.frac_coords).all())


def structure_problems(structure: Structure, limits: Limits = Limits()) -> list[str]:
    """Reasons why `structure` is not a usable ordered periodic crystal (empty if it is)."""
    n = len(structure)
    if n == 0:
        return ["structure has no atoms"]
    if n > limits.max_atoms:
        return [f"{n} atoms exceed the cap of {limits.max_atoms} (Limits.max_atoms)"]
    problems = []
    for k, site in enumerate(structure):
        if any(isinstance(sp, DummySpecies) for sp in site.species):
            problems.append(f"site {k} ({site.species_string}) is not a chemical element")
        elif not site.is_ordered:
            problems.append(
                f"site {k} has partial occupancy ({site.species_string}): disordered "
                "structures are not supported; order them first (e.g. pymatgen "
                "OrderDisorderedStructureTransformation)"
            )
    if problems:
        return problems
    lattice = structure.lattice.matrix
    if not np.all(np.isfinite(lattice)):
        return ["lattice contains NaN or inf"]
    bad = np.nonzero(~np.all(np.isfinite(structure.frac_coords), axis=1))[0]
    if len(bad):
        return [f"coordinates of site(s) {bad.tolist()} are NaN or inf"]
    det = float(np.linalg.det(lattice))
    if det <= 0:
        return [f"lattice has zero or negative volume (det = {det:.4g} Å^3)"]
    if det < limits.min_volume:
        return [f"cell volume {det:.3g} Å^3 is below {limits.min_volume} Å^3"]
    return _distance_problems(structure, limits)


def _distance_problems(structure: Structure, limits: Limits) -> list[str]:
    """Overlapping atoms and isolated atoms, from one periodic radius graph."""
    frac = torch.tensor(structure.frac_coords, dtype=torch.float64)
    lattice = torch.tensor(structure.lattice.matrix, dtype=torch.float64)[None]
    num_atoms = torch.tensor([len(structure)])
    graph = radius_graph(frac, lattice, num_atoms, limits.isolation_distance)
    lengths = edge_lengths(frac, lattice, torch.zeros(len(frac), dtype=torch.long), graph)
    problems = []
    close = torch.nonzero(lengths < limits.min_distance).squeeze(1)
    if len(close):
        k = int(close[torch.argmin(lengths[close])])
        j, i = graph.edge_index[:, k].tolist()
        problems.append(
            f"atoms {i} ({structure[i].specie}) and {j} ({structure[j].specie}) are "
            f"{float(lengths[k]):.3f} Å apart (< {limits.min_distance} Å): overlapping atoms"
        )
    has_neighbour = torch.zeros(len(structure), dtype=torch.bool)
    has_neighbour[graph.edge_index[1]] = True
    lonely = torch.nonzero(~has_neighbour).squeeze(1).tolist()
    if lonely:
        problems.append(
            f"atom(s) {lonely} have no neighbour within {limits.isolation_distance} Å: "
            "isolated atoms, not a periodic solid"
        )
    return problems


def exact_key(structure: Structure, decimals: int = 4) -> tuple:
    """Hashable identity of a structure as written: same lattice, species and positions.

    Catches exact duplicates (repeated rows, copied files) cheaply; symmetry-equivalent
    but differently written structures need StructureMatcher.
    """
    lattice = np.round(structure.lattice.matrix, decimals) + 0.0
    frac = np.round(np.mod(structure.frac_coords, 1.0), decimals) % 1.0 + 0.0
    sites = sorted(zip(structure.atomic_numbers, map(tuple, frac.tolist())))
    return (tuple(map(tuple, lattice.tolist())), tuple(sites))
