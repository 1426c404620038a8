"""Comparison generators behind one interface, so the benchmark suite has something to
compare a model with: `generate(num, seed)` gives de novo crystals, `predict(inputs, seed)`
gives one structure per input composition (CSP). Both return pymatgen structures."""

from autoperi.baselines.perturbed import PerturbedTraining
from autoperi.baselines.random_symmetric import RandomSymmetric

__all__ = ["PerturbedTraining", "RandomSymmetric"]
