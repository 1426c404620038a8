"""Dynamical stability from finite-displacement phonons (phonopy, extra ``autoperi[mlip]``).

Forces come from the same potential as the energies and relaxations (`autoperi.eval.energy`),
for all displaced supercells of all structures in one batched evaluation. Give relaxed
structures: phonons of a structure away from a stationary point mean little (the forces
of the undisplaced supercell are subtracted, which removes the first-order residue only).

A structure counts as dynamically unstable when a mode has an imaginary frequency below
`IMAGINARY_TOLERANCE` (-0.1 THz; phonopy reports imaginary frequencies as negative numbers)
anywhere on a Gamma-centred q mesh, the three acoustic modes at Gamma excepted (the three
modes closest to zero there: zero by translation symmetry, numerical noise otherwise).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pymatgen.core import Structure
from tqdm.auto import tqdm

from autoperi.eval.energy import Potential, default_potential, input_problem

log = logging.getLogger(__name__)

IMAGINARY_TOLERANCE = -0.1  # THz
MIN_SUPERCELL_LENGTH = 8.0  # Å between opposite faces of the supercell
MAX_SUPERCELL_ATOMS = 256
DISPLACEMENT = 0.01  # Å, phonopy's default


@dataclass(frozen=True)
class PhononResult:
    """Per structure [S]: lowest frequency in THz over the q mesh without the acoustic modes
    at Gamma (negative = imaginary; NaN with a reason on failure), whether an imaginary mode
    beyond `tolerance` exists, and the diagonal supercell used."""

    lowest_frequency: np.ndarray
    imaginary: np.ndarray
    supercell: list[tuple[int, int, int] | None]
    reasons: list[str | None]
    tolerance: float

    @property
    def stable(self) -> np.ndarray:
        """True where no imaginary mode was found (False where unknown)."""
        return ~self.imaginary & np.isfinite(self.lowest_frequency)

    def __len__(self) -> int:
        return len(self.lowest_frequency)


def supercell_size(structure: Structure, min_length: float = MIN_SUPERCELL_LENGTH,
                   max_atoms: int = MAX_SUPERCELL_ATOMS) -> tuple[int, int, int]:
    """Diagonal supercell whose face-to-face heights reach `min_length` Å, shrunk along its
    longest directions until it has at most `max_atoms` atoms (never below 1 per axis)."""
    matrix = structure.lattice.matrix
    volume = abs(np.linalg.det(matrix))
    heights = [volume / np.linalg.norm(np.cross(matrix[(i + 1) % 3], matrix[(i + 2) % 3]))
               for i in range(3)]
    size = [max(1, math.ceil(min_length / h - 1e-9)) for h in heights]
    while np.prod(size) * len(structure) > max_atoms and max(size) > 1:
        # drop one repeat along every direction where the supercell is longest (ties too)
        longest = max(n * h for n, h in zip(size, heights, strict=True) if n > 1)
        size = [n - 1 if n > 1 and n * h >= longest - 1e-6 else n
                for n, h in zip(size, heights, strict=True)]
    return tuple(size)


def phonons(structures: Sequence[Structure], potential: Potential | None = None,
            supercell: tuple[int, int, int] | None = None,
            min_length: float = MIN_SUPERCELL_LENGTH, max_atoms: int = MAX_SUPERCELL_ATOMS,
            mesh: int | Sequence[int] = 8, displacement: float = DISPLACEMENT,
            tolerance: float = IMAGINARY_TOLERANCE, batch_size: int = 32,
            progress: bool = True) -> PhononResult:
    """Harmonic phonons of each (relaxed) structure by finite displacements.

    supercell: the same diagonal repeat for every structure, or None to choose one per
    structure (`supercell_size`). mesh: q mesh per axis (Gamma-centred; even meshes contain
    the zone-boundary points commensurate with a 2x supercell).
    """
    try:
        from phonopy import Phonopy
        from phonopy.structure.atoms import PhonopyAtoms
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("phonopy is not installed: pip install 'autoperi[mlip]'") from exc
    pot = potential or default_potential()
    count = len(structures)
    mesh = [mesh] * 3 if isinstance(mesh, int) else list(mesh)
    lowest = np.full(count, np.nan)
    sizes: list[tuple[int, int, int] | None] = [None] * count
    reasons: list[str | None] = [input_problem(s) for s in structures]
    jobs = {}  # k -> (phonopy object, first row in `cells`, number of displacements)
    cells: list[Structure] = []
    for k, s in enumerate(structures):
        if reasons[k] is not None:
            continue
        size = tuple(supercell) if supercell is not None else supercell_size(
            s, min_length, max_atoms)
        try:
            unit = PhonopyAtoms(numbers=s.atomic_numbers, cell=s.lattice.matrix,
                                scaled_positions=s.frac_coords)
            ph = Phonopy(unit, supercell_matrix=np.diag(size), primitive_matrix="P",
                         log_level=0)
            ph.generate_displacements(distance=displacement)
            displaced = [ph.supercell] + list(ph.supercells_with_displacements)
        except Exception as exc:  # noqa: BLE001 - reported per structure
            reasons[k] = f"phonopy could not set up displacements: {_describe(exc)}"
            continue
        sizes[k] = size
        jobs[k] = (ph, len(cells), len(displaced) - 1)
        cells.extend(Structure(c.cell, c.numbers, c.scaled_positions) for c in displaced)
    forces: list[np.ndarray | None] = [None] * len(cells)
    failures: list[str | None] = [None] * len(cells)
    for lo in tqdm(range(0, len(cells), batch_size), desc="phonon forces",
                   disable=not progress):
        pred = pot.predict(cells[lo:lo + batch_size], forces=True)
        forces[lo:lo + len(pred.forces)] = pred.forces
        failures[lo:lo + len(pred.reasons)] = pred.reasons
    for k, (ph, first, n_disp) in jobs.items():
        rows = range(first, first + n_disp + 1)
        bad = [failures[r] for r in rows if failures[r] is not None]
        if bad:
            reasons[k] = f"{pot.name} failed on a displaced supercell: {bad[0]}"
            continue
        try:
            lowest[k] = _lowest_frequency(ph, [forces[r] for r in rows], mesh)
        except Exception as exc:  # noqa: BLE001 - reported per structure
            reasons[k] = f"phonopy failed: {_describe(exc)}"
    with np.errstate(invalid="ignore"):
        imaginary = lowest < tolerance
    return PhononResult(lowest, imaginary, sizes, reasons, tolerance)


def _lowest_frequency(ph, forces: list[np.ndarray], mesh: list[int]) -> float:
    """Lowest frequency (THz) on the mesh, the three acoustic modes at Gamma left out."""
    perfect = forces[0]
    ph.forces = np.array([f - perfect for f in forces[1:]])
    ph.produce_force_constants(show_drift=False)
    ph.symmetrize_force_constants(show_drift=False)
    ph.run_mesh(mesh, is_gamma_center=True)
    return lowest_non_acoustic(np.asarray(ph.mesh.frequencies), np.asarray(ph.mesh.qpoints))


def lowest_non_acoustic(frequencies: np.ndarray, qpoints: np.ndarray) -> float:
    """Lowest of frequencies [Q, bands] (THz) at qpoints [Q, 3] (reduced), leaving out at
    Gamma the three modes closest to zero (the acoustic ones; an imaginary optical mode at
    Gamma, e.g. a polar instability, is kept)."""
    if not np.all(np.isfinite(frequencies)):
        raise ValueError("non-finite phonon frequencies")
    gamma = np.all(np.abs(qpoints - np.round(qpoints)) < 1e-8, axis=1)
    at_gamma = frequencies[gamma]
    order = np.argsort(np.abs(at_gamma), axis=1, kind="stable")[:, 3:]
    optical = np.take_along_axis(at_gamma, order, axis=1)
    values = np.concatenate([frequencies[~gamma].ravel(), optical.ravel()])
    return float(values.min()) if len(values) else float("nan")


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]
