"""Energy, relaxation and thermodynamic stability of generated crystals, per structure.

One potential judges everything: the samples (as generated, and relaxed with `relax=True`),
the reference crystals that build the convex hull, and the pure elements at its corners.
Datasets such as Perov-5 hold no pure elements, so the corners are made here: for each
element, a few simple prototypes (fcc, bcc, hcp and ASE's reference state; a dimer in a
box for the gases ASE describes as diatomic molecules) relaxed with the potential, the
lowest energy kept. These are the potential's own elemental ground states within that
small search, cached per potential; a true elemental ground state below them would only
lower the hull corners, which matter little once compounds span the chemical system.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from pymatgen.core import Element, Structure

from autoperi.atomic import atomic_path
from autoperi.eval.energy import (
    RELAXATION_ENERGY_THRESHOLD,
    STABLE_THRESHOLDS,
    Potential,
    default_potential,
    e_above_hull,
    energies,
    reference_entries,
    relax,
)
from autoperi.eval.phonons import phonons

log = logging.getLogger(__name__)

PROTOTYPES = ("fcc", "bcc", "hcp", "reference")
DIMER_BOX = 10.0  # Å, cubic box around a diatomic molecule
# Halogens ASE describes as crystals: their molecules are tried too (Å, gas-phase bonds);
# with CHGNet the Cl2 dimer is far below every close-packed prototype (tested).
DIMERS = {"Cl": 1.99, "Br": 2.28, "I": 2.67}
ELEMENTS_CACHE = "elements-v2"  # v1 lacked the halogen dimers


def element_prototypes(symbol: str) -> list[Structure]:
    """Starting cells for an element: fcc, bcc, hcp with touching covalent spheres plus ASE's
    reference state, or a dimer in a box for diatomic gases (and both for Cl, Br, I)."""
    from ase.build import bulk
    from ase.data import atomic_numbers, covalent_radii, reference_states
    from pymatgen.io.ase import AseAtomsAdaptor

    z = atomic_numbers[symbol]
    state = reference_states[z] or {}
    bond = float(state["d"]) if state.get("symmetry") == "diatom" else DIMERS.get(symbol)
    out = [] if bond is None else [Structure(np.eye(3) * DIMER_BOX, [symbol, symbol],
                                             [[0, 0, 0], [0, 0, bond / DIMER_BOX]])]
    if state.get("symmetry") == "diatom":
        return out
    radius = float(covalent_radii[z])
    for kind in PROTOTYPES:
        try:
            atoms = (bulk(symbol) if kind == "reference"
                     else bulk(symbol, kind, a=_lattice_constant(kind, radius)))
        except (ValueError, KeyError, RuntimeError):  # no usable reference state
            continue
        out.append(AseAtomsAdaptor.get_structure(atoms))
    return out


def _lattice_constant(kind: str, radius: float) -> float:
    """Touching spheres of the covalent radius."""
    return {"fcc": 2 * np.sqrt(2) * radius, "bcc": 4 * radius / np.sqrt(3),
            "hcp": 2 * radius}[kind]


def elemental_entries(elements: Sequence[str], potential: Potential | None = None,
                      cache_dir: str | Path | None = None, progress: bool = True) -> list:
    """One PDEntry per element: the lowest relaxed energy over its prototypes, with the
    potential. Cached as JSON per potential in `cache_dir` (when given)."""
    from pymatgen.analysis.phase_diagram import PDEntry

    pot = potential or default_potential()
    cache = (None if cache_dir is None
             else Path(cache_dir) / f"{ELEMENTS_CACHE}-{pot.name}.json")
    known = json.loads(cache.read_text()) if cache is not None and cache.exists() else {}
    todo = sorted({str(e) for e in elements} - set(known))
    if todo:
        starts, owners = [], []
        for symbol in todo:
            for s in element_prototypes(symbol):
                starts.append(s)
                owners.append(symbol)
        result = relax(starts, potential=pot, progress=progress)
        for symbol in todo:
            values = [result.e_relaxed[k] for k, o in enumerate(owners) if o == symbol]
            values = [v for v in values if np.isfinite(v)]
            if values:
                known[symbol] = float(min(values))
            else:  # not cached: tried again next time
                log.warning("no elemental reference for %s: every prototype failed", symbol)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(cache) as tmp:
                Path(tmp).write_text(json.dumps(known, indent=1, sort_keys=True))
    return [PDEntry(Element(s).symbol, known[s], name=f"{s} (prototype)")
            for s in sorted({str(e) for e in elements}) if known.get(s) is not None]


def hull_entries(structures: Sequence[Structure], potential: Potential | None = None,
                 cache_dir: str | Path | None = None, progress: bool = True,
                 extra_elements: Sequence[str] = ()) -> list:
    """Entries of the convex hull: the reference structures with the potential's energies
    (cached by a hash of the structures) plus elemental corners for all their elements and
    `extra_elements` (those of the structures to be judged)."""
    pot = potential or default_potential()
    elements = sorted({str(e) for s in structures for e in s.composition.elements}
                      | set(extra_elements))
    cache = None
    if cache_dir is not None:
        cache = Path(cache_dir) / f"hull-{pot.name}-{_digest(structures)}.json"
    if cache is not None and cache.exists():
        from pymatgen.analysis.phase_diagram import PDEntry

        entries = [PDEntry.from_dict(d) for d in json.loads(cache.read_text())]
    else:
        entries = reference_entries(structures, pot, progress=progress)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(cache) as tmp:
                Path(tmp).write_text(json.dumps([e.as_dict() for e in entries]))
    return entries + elemental_entries(elements, pot, cache_dir, progress)


def _digest(structures: Sequence[Structure]) -> str:
    h = hashlib.sha256()
    for s in structures:
        h.update(np.asarray(s.atomic_numbers, dtype=np.int64).tobytes())
        h.update(np.round(s.lattice.matrix, 5).tobytes())
        h.update(np.round(s.frac_coords, 5).tobytes())
    return h.hexdigest()[:16]


def stability_table(samples: Sequence[Structure], hull_reference: Sequence[Structure],
                    potential: Potential | None = None, relaxed: bool = False,
                    cache_dir: str | Path | None = None, progress: bool = True,
                    phonon_checks: int = 0, **relax_kwargs) -> tuple[pd.DataFrame, dict]:
    """Per-sample energies and stability, and their aggregate.

    Columns: energy_per_atom (as generated), and with `relaxed` relaxed_energy_per_atom,
    relaxation_energy (E_unrelaxed - E_relaxed, eV/atom), relax_rmsd (Å), relax_converged,
    relax_steps; e_above_hull (of the relaxed structure when relaxed, eV/atom), stable
    (<= 0.0), metastable (<= 0.1), hull_covered (`covered_systems`) and energy_problem (why a
    value is missing). With `relaxed`, the hull references keep their own (unrelaxed)
    geometry: for DFT-relaxed references CHGNet's relaxation lowers them by meV/atom, so a
    relaxed copy of a reference can sit a few meV/atom below its own hull.
    phonon_checks (needs `relaxed`): finite-displacement phonons (`eval.phonons`) of the
    first that many converged relaxed structures: lowest_frequency (THz, negative =
    imaginary) and dynamically_stable (no imaginary mode beyond the tolerance).
    """
    if phonon_checks and not relaxed:
        raise ValueError("phonon checks need relaxed structures (relaxed=True)")
    pot = potential or default_potential()
    frame = pd.DataFrame(index=range(len(samples)))
    if relaxed:
        result = relax(samples, potential=pot, progress=progress, **relax_kwargs)
        frame["energy_per_atom"] = result.e_unrelaxed
        frame["relaxed_energy_per_atom"] = result.e_relaxed
        frame["relaxation_energy"] = result.e_unrelaxed - result.e_relaxed
        frame["relax_rmsd"] = result.rmsd
        frame["relax_converged"] = result.converged
        frame["relax_steps"] = result.steps
        final, reasons = result.e_relaxed, list(result.reasons)
    else:
        got = energies(samples, pot, progress=progress)
        frame["energy_per_atom"] = got.per_atom
        final, reasons = got.per_atom, list(got.reasons)
    sample_elements = {str(e) for s in samples for e in s.composition.elements}
    entries = hull_entries(hull_reference, pot, cache_dir, progress, sorted(sample_elements))
    hull = e_above_hull(samples, final, entries)
    frame["e_above_hull"] = hull.e_above_hull
    frame["stable"] = hull.stable
    frame["metastable"] = hull.metastable
    frame["hull_covered"] = covered_systems(samples, entries)
    frame["energy_problem"] = [r or h for r, h in zip(reasons, hull.reasons, strict=True)]
    summary = _summary(frame, pot.name, relaxed, len(hull_reference))
    if phonon_checks:
        chosen = np.nonzero(result.converged)[0][:phonon_checks]
        got = phonons([result.structures[k] for k in chosen], pot, progress=progress)
        frame["lowest_frequency"] = np.nan
        frame["dynamically_stable"] = pd.Series(pd.NA, index=frame.index, dtype="boolean")
        frame.loc[chosen, "lowest_frequency"] = got.lowest_frequency
        known = np.isfinite(got.lowest_frequency)
        frame.loc[chosen[known], "dynamically_stable"] = got.stable[known]
        summary.update(phonons_checked=int(known.sum()),
                       dynamically_stable=float(got.stable[known].mean()) if known.any()
                       else float("nan"), imaginary_tolerance_thz=got.tolerance)
    return frame, summary


def covered_systems(structures: Sequence[Structure], entries: Sequence) -> np.ndarray:
    """[S] bool: the hull of the structure's chemical system holds at least one reference
    compound (an entry of two or more elements within the system). Where it does not, the
    hull is the elemental corners alone and E_hull only says "below the elements"."""
    compounds = {frozenset(map(str, e.composition.elements)) for e in entries
                 if len(e.composition.elements) > 1}
    return np.array([any(c <= frozenset(map(str, s.composition.elements)) for c in compounds)
                     for s in structures], dtype=bool)


def _summary(frame: pd.DataFrame, potential: str, relaxed: bool, n_hull: int) -> dict:
    n = len(frame)
    known = np.isfinite(frame["e_above_hull"].to_numpy())
    out = {"potential": potential, "relaxed": relaxed, "hull_reference": n_hull,
           "thresholds_ev_per_atom": list(STABLE_THRESHOLDS),
           "with_energy": float(np.isfinite(frame["energy_per_atom"]).mean()),
           "with_e_above_hull": float(known.mean()),
           "mean_energy_per_atom": finite_mean(frame["energy_per_atom"]),
           "median_e_above_hull": float(np.median(frame["e_above_hull"][known]))
           if known.any() else float("nan"),
           "stable": float(frame["stable"].sum() / n),
           "metastable": float(frame["metastable"].sum() / n),
           "hull_covered": float(frame["hull_covered"].mean()),
           "metastable_covered": float((frame["metastable"] & frame["hull_covered"]).sum() / n)}
    if relaxed:
        rel = frame["relaxation_energy"].to_numpy()
        out.update(relaxation_energy_threshold=RELAXATION_ENERGY_THRESHOLD,
                   relaxation_energy_below_threshold=float(
                       np.sum(rel < RELAXATION_ENERGY_THRESHOLD) / n),
                   mean_relaxation_energy=finite_mean(rel),
                   mean_relax_rmsd=finite_mean(frame["relax_rmsd"]),
                   relax_converged=float(frame["relax_converged"].mean()))
    return out


def finite_mean(values) -> float:
    """Mean of the finite values (NaN when there are none)."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    return float(values.mean()) if len(values) else float("nan")
