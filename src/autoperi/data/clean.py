"""Cleaning one structure for a dataset: reduced cell and its space group.

Kept separate from I/O: reading says whether a file is usable; cleaning puts a usable
structure into the canonical form the models see.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    properties = dict(structure.properties or {})
    analyzer = SpacegroupAnalyzer(structure, options.symprec, options.angle_tolerance)
    space_group = analyzer.get_space_group_number()
    if options.symmetrize:
        structure = analyzer.get_primitive_standard_structure()
        if not options.primitive:
            structure = analyzer.get_refined_structure()
    elif options.primitive:
        structure = structure.get_primitive_structure(tolerance=0.01)
    reduced = structure.get_reduced_structure("niggli")
    reduced.properties = {**properties, "spacegroup": space_group}
    return reduced
