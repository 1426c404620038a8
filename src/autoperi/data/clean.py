"""Cleaning one structure for a dataset: reduced cell and its space group.

Kept separate from I/O: reading says whether a file is usable; cleaning puts a usable
structure into the canonical form the models see.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import spglib
from pymatgen.core import Structure
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

# International space-group number -> crystal system (lower bound of each range).
_SYSTEMS = ((1, "triclinic"), (3, "monoclinic"), (16, "orthorhombic"), (75, "tetragonal"),
            (143, "trigonal"), (168, "hexagonal"), (195, "cubic"))


@dataclass(frozen=True)
class CleanOptions:
    """How structures are put in canonical form (all saved with the dataset cache)."""

    symprec: float = 0.1  # Å, spglib symmetry tolerance (the CDVAE/DiffCSP choice)
    angle_tolerance: float = 5.0  # degrees, spglib
    primitive: bool = True  # reduce to a primitive cell
    symmetrize: bool = False  # replace by the spglib-refined (ideal-symmetry) structure


def crystal_system(space_group: int) -> str:
    """Crystal system of an international space-group number (1-230)."""
    if not 1 <= space_group <= 230:
        raise ValueError(f"space group number must be 1..230, got {space_group}")
    return [name for low, name in _SYSTEMS if space_group >= low][-1]


def clean_structure(structure: Structure, options: CleanOptions = CleanOptions()) -> Structure:
    """Primitive (optional), symmetrized (optional), Niggli-reduced copy of `structure`.

    The space group found by spglib at `options.symprec` is stored in
    `properties["spacegroup"]`; other properties are carried over. A reduced cell keeps
    periodic images compact, so neighbour searches and models see well-shaped cells.
    """
    return clean_with_symmetry(structure, options)[0]


def clean_with_symmetry(structure: Structure, options: CleanOptions = CleanOptions()
                        ) -> tuple[Structure, np.ndarray]:
    """`clean_structure` plus the space-group operations of the cleaned cell, [M, 3, 4]
    (rotation | translation acting on fractional coordinates: f' = R f + t)."""
    properties = dict(structure.properties or {})
    if options.symmetrize:
        analyzer = SpacegroupAnalyzer(structure, options.symprec, options.angle_tolerance)
        structure = (analyzer.get_primitive_standard_structure() if options.primitive
                     else analyzer.get_refined_structure())
    elif options.primitive:
        structure = structure.get_primitive_structure(tolerance=0.01)
    reduced = structure.get_reduced_structure("niggli")
    cell = (reduced.lattice.matrix, reduced.frac_coords, reduced.atomic_numbers)
    data = spglib.get_symmetry_dataset(cell, symprec=options.symprec,
                                       angle_tolerance=options.angle_tolerance)
    if data is None:
        raise ValueError(f"spglib found no symmetry at symprec={options.symprec}")
    ops = np.concatenate([data.rotations, data.translations[:, :, None]], axis=2)
    reduced.properties = {**properties, "spacegroup": int(data.number)}
    return reduced, ops.astype(np.float32)
