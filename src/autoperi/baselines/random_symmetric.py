"""Random symmetric crystals (pyxtal): the baseline every generator must beat.

De novo: the composition and space group of a randomly drawn training crystal, atoms placed
at random on compatible Wyckoff positions. CSP: the input's composition, space groups drawn
from the training set's space-group distribution (never the input's own). When pyxtal finds
no compatible Wyckoff assignment, another space group is drawn, and P1 always works.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pymatgen.core import Structure

from autoperi.eval.distribution import space_groups

# Atoms in the conventional cell per atom of the primitive cell, by centring letter
# (R groups in pyxtal's hexagonal setting).
CENTRING = {"P": 1, "A": 2, "B": 2, "C": 2, "I": 2, "F": 4, "R": 3}


class RandomSymmetric:
    """pyxtal random crystals with compositions (and space groups) from training data.

    volume_factor: pyxtal's cell volume relative to the sum of atomic volumes (its default
    1.1). tries: space groups tried per crystal before falling back to P1.
    """

    name = "pyxtal"

    def __init__(self, train: Sequence[Structure], volume_factor: float = 1.1,
                 tries: int = 10, symprec: float = 0.1) -> None:
        try:
            import pyxtal  # noqa: F401
        except ImportError:
            raise ImportError("the random-symmetric baseline needs pyxtal "
                              "(pip install 'autoperi[baselines]')") from None
        if not train:
            raise ValueError("RandomSymmetric needs training structures")
        if volume_factor <= 0 or tries < 1:
            raise ValueError(f"need volume_factor > 0 and tries >= 1, got {volume_factor}, "
                             f"{tries}")
        self.train = list(train)
        stored = [(s.properties or {}).get("spacegroup") for s in self.train]
        missing = [k for k, g in enumerate(stored) if not g]
        found = space_groups([self.train[k] for k in missing], symprec, progress=False)
        for k, g in zip(missing, found, strict=True):
            stored[k] = g
        self.groups = np.maximum(np.array(stored, dtype=int), 1)  # 0: spglib found none
        self.volume_factor, self.tries = volume_factor, tries

    def generate(self, num: int, seed: int = 0) -> list[Structure]:
        """`num` random crystals, each from the composition and group of a training crystal."""
        rng = np.random.default_rng(seed)
        out = []
        for _ in range(num):
            k = int(rng.integers(len(self.train)))
            groups = [int(self.groups[k]), *self._draw_groups(rng)]
            out.append(self.crystal(self.train[k], groups, rng))
        return out

    def predict(self, inputs: Sequence[Structure], seed: int = 0) -> list[Structure]:
        """One random symmetric structure per input composition, in input order."""
        rng = np.random.default_rng(seed)
        return [self.crystal(s, self._draw_groups(rng), rng) for s in inputs]

    def _draw_groups(self, rng: np.random.Generator) -> list[int]:
        return [int(g) for g in rng.choice(self.groups, size=self.tries)]

    def crystal(self, template: Structure, groups: Sequence[int],
                rng: np.random.Generator) -> Structure:
        """A random crystal with the composition of `template` (its primitive cell) in the
        first of `groups` that pyxtal can fill, else P1; properties record the group."""
        from pyxtal import pyxtal
        from pyxtal.symmetry import Group

        composition = template.composition
        species = [e.symbol for e in composition.elements]
        for group in [*groups, 1]:
            multiplicity = CENTRING[Group(group).symbol[0]]
            counts = [int(round(n)) * multiplicity for n in composition.values()]
            crystal = pyxtal()
            try:
                crystal.from_random(3, group, species, counts, factor=self.volume_factor,
                                    random_state=int(rng.integers(2**31)))
            except Exception:  # noqa: BLE001 - pyxtal signals incompatibility many ways
                continue
            if not crystal.valid:
                continue
            structure = crystal.to_pymatgen()
            if multiplicity > 1:
                structure = structure.get_primitive_structure()
            structure = Structure(structure.lattice, structure.species,
                                  structure.frac_coords % 1.0,
                                  properties={"baseline_space_group": group})
            return structure
        raise RuntimeError(f"pyxtal could not place {composition.formula} even in P1")

