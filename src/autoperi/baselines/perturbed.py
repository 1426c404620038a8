"""The "perturbed training set" sanity baseline: training crystals with their atoms shaken
and their cells strained a little. A suite that calls these novel, or a generator that does
not beat them on novelty, is telling you something."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pymatgen.core import Lattice, Structure


class PerturbedTraining:
    """Random training crystals, each atom displaced by Gaussian noise of `sigma` Å per
    Cartesian component and the cell deformed by (I + e), e symmetric with entries of
    standard deviation `strain`."""

    name = "perturbed"

    def __init__(self, train: Sequence[Structure], sigma: float = 0.1,
                 strain: float = 0.02) -> None:
        if not train:
            raise ValueError("PerturbedTraining needs training structures")
        if sigma < 0 or strain < 0:
            raise ValueError(f"need sigma >= 0 and strain >= 0, got {sigma}, {strain}")
        self.train, self.sigma, self.strain = list(train), sigma, strain

    def generate(self, num: int, seed: int = 0) -> list[Structure]:
        rng = np.random.default_rng(seed)
        picks = rng.integers(len(self.train), size=num)
        return [self.perturb(self.train[int(k)], rng) for k in picks]

    def predict(self, inputs: Sequence[Structure], seed: int = 0) -> list[Structure]:
        """CSP "prediction" by perturbing the input itself: an upper bound, not a method."""
        rng = np.random.default_rng(seed)
        return [self.perturb(s, rng) for s in inputs]

    def perturb(self, structure: Structure, rng: np.random.Generator) -> Structure:
        e = rng.normal(scale=self.strain, size=(3, 3))
        deformation = np.eye(3) + (e + e.T) / 2
        lattice = structure.lattice.matrix @ deformation  # rows a, b, c deformed alike
        cart = structure.frac_coords @ lattice
        cart = cart + rng.normal(scale=self.sigma, size=cart.shape)
        frac = np.linalg.solve(lattice.T, cart.T).T % 1.0
        return Structure(Lattice(lattice), structure.species, frac)
