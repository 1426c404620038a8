"""Structural and compositional validity (the CDVAE definitions everyone reports)."""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence

import numpy as np
import torch
from pymatgen.core import Composition, Structure

from autoperi.data.crystal import CrystalBatch
from autoperi.geometry.graph import edge_lengths, radius_graph

MIN_DISTANCE = 0.5  # Å
MIN_VOLUME = 0.1  # Å^3
# Elements treated as metals for the "all-metal compositions are valid" rule (alloys).
_NON_METALS = {"H", "He", "B", "C", "N", "O", "F", "Ne", "Si", "P", "S", "Cl", "Ar", "Ge",
               "As", "Se", "Br", "Kr", "Sb", "Te", "I", "Xe", "At", "Rn"}


def structural_validity(structures: Sequence[Structure], min_distance: float = MIN_DISTANCE,
                        min_volume: float = MIN_VOLUME) -> np.ndarray:
    """True where every interatomic distance (all periodic images) is >= min_distance Å and
    the cell volume is >= min_volume Å^3, [S]."""
    usable = [k for k, s in enumerate(structures)
              if np.all(np.isfinite(s.lattice.matrix)) and np.all(np.isfinite(s.frac_coords))
              and len(s) > 0 and abs(np.linalg.det(s.lattice.matrix)) >= min_volume]
    out = np.zeros(len(structures), dtype=bool)
    for lo in range(0, len(usable), 1024):  # one batched graph per chunk
        chunk = usable[lo:lo + 1024]
        batch = CrystalBatch.from_structures([structures[k] for k in chunk], dtype=torch.float64)
        graph = batch.graph(min_distance)
        close = torch.bincount(batch.crystal_idx[graph.edge_index[1]], minlength=len(chunk))
        out[chunk] = (close == 0).numpy()
    return out


def compositional_validity(structures_or_compositions: Sequence) -> np.ndarray:
    """SMACT validity, [S]: True for single elements, all-metal compositions, and
    compositions with a charge-neutral assignment of common oxidation states in which
    cations are less electronegative than anions (Pauling test)."""
    return np.array([_smact_valid(_formula_counts(x)) for x in structures_or_compositions])


def _formula_counts(item) -> tuple[tuple[str, int], ...]:
    comp = item.composition if isinstance(item, Structure) else Composition(item)
    reduced = comp.reduced_composition
    return tuple(sorted((el.symbol, int(round(n))) for el, n in reduced.items()))


@functools.lru_cache(maxsize=65536)
def _smact_valid(counts: tuple[tuple[str, int], ...]) -> bool:
    from smact import Element as SmactElement
    from smact.screening import pauling_test

    symbols = [s for s, _ in counts]
    if len(symbols) == 1:
        return True
    if all(s not in _NON_METALS for s in symbols):
        return True
    try:
        elements = [SmactElement(s) for s in symbols]
    except (NameError, KeyError, ValueError):
        return False  # SMACT has no data (e.g. heavy actinides): not provably valid
    electroneg = [e.pauling_eneg for e in elements]
    ox_lists = [e.oxidation_states or [] for e in elements]
    if any(not ox for ox in ox_lists):
        return False
    stoich = [n for _, n in counts]
    for states in itertools.product(*ox_lists):
        if sum(q * n for q, n in zip(states, stoich)) != 0:
            continue
        if any(x is None for x in electroneg):
            return True  # no electronegativity to contradict a neutral assignment
        if pauling_test(states, electroneg):
            return True
    return False


def minimum_distances(structures: Sequence[Structure], cutoff: float = 6.0) -> np.ndarray:
    """Shortest interatomic distance of each structure over all images (inf if none)."""
    out = np.full(len(structures), np.inf)
    for k, s in enumerate(structures):
        frac = torch.tensor(s.frac_coords, dtype=torch.float64)
        lat = torch.tensor(s.lattice.matrix, dtype=torch.float64)[None]
        graph = radius_graph(frac, lat, torch.tensor([len(s)]), cutoff)
        if graph.num_edges:
            out[k] = float(edge_lengths(frac, lat, torch.zeros(len(s), dtype=torch.long),
                                        graph).min())
    return out
