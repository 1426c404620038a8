"""Base distributions: uniform coordinates, Gaussian type noise, an informative lattice prior
fitted to the data (conditioned on atom count or composition) and the atom-count histogram."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from autoperi.data.features import element_feature_names, element_features
from autoperi.flow.paths import lattice_to_y


def atomic_volume_sum(atomic_numbers: Tensor, crystal_idx: Tensor, num_crystals: int) -> Tensor:
    """Sum of elemental ground-state volumes per atom (Magpie GSvolume_pa) per crystal, [B]."""
    table, _ = element_features(standardize=False)
    volumes = table[:, element_feature_names().index("GSvolume_pa")].double()
    per_atom = volumes.to(atomic_numbers.device)[atomic_numbers]
    out = torch.zeros(num_crystals, dtype=torch.float64, device=atomic_numbers.device)
    return out.index_add(0, crystal_idx, per_atom)


@dataclass(frozen=True)
class LatticePrior:
    """Gaussian over y = (log lengths, angles) whose length mean follows the expected volume.

    Expected volume: sum of elemental volumes times exp(log_volume_ratio) when the
    composition is known (CSP), else atom count times the mean volume per atom (de novo).
    """

    log_volume_ratio: float
    mean_atom_volume: float
    length_offset: tuple[float, float, float]  # mean of log(length) - log(V_expected) / 3
    length_std: tuple[float, float, float]
    angle_mean: tuple[float, float, float]
    angle_std: tuple[float, float, float]

    @staticmethod
    def fit(lattice: Tensor, atomic_numbers: Tensor, num_atoms: Tensor) -> LatticePrior:
        lattice = lattice.double()
        crystal_idx = torch.repeat_interleave(torch.arange(len(num_atoms)), num_atoms)
        volume = torch.linalg.det(lattice).abs()
        reference = atomic_volume_sum(atomic_numbers, crystal_idx, len(num_atoms))
        log_ratio = float(torch.log(volume / reference).mean())
        y = lattice_to_y(lattice)
        expected = torch.log(reference * torch.exp(torch.tensor(log_ratio))) / 3.0
        offsets = y[:, :3] - expected[:, None]

        def spread(x: Tensor) -> Tensor:  # std, with a floor (and a guess for one crystal)
            return (x.std(0) if len(x) > 1 else torch.full((3,), 0.1)).clamp_min(0.02)

        return LatticePrior(
            log_volume_ratio=log_ratio,
            mean_atom_volume=float((volume / num_atoms).mean()),
            length_offset=tuple(offsets.mean(0).tolist()),
            length_std=tuple(spread(offsets).tolist()),
            angle_mean=tuple(y[:, 3:].mean(0).tolist()),
            angle_std=tuple(spread(y[:, 3:]).tolist()),
        )

    def mean(self, num_atoms: Tensor, atomic_numbers: Tensor | None = None) -> Tensor:
        """Prior mean of y, [B, 6]; composition-aware when atomic_numbers [N] are given."""
        device = num_atoms.device
        if atomic_numbers is None:
            volume = num_atoms.double() * self.mean_atom_volume
        else:
            crystal_idx = torch.repeat_interleave(torch.arange(len(num_atoms), device=device),
                                                  num_atoms)
            volume = atomic_volume_sum(atomic_numbers, crystal_idx, len(num_atoms))
            volume = volume * torch.exp(torch.tensor(self.log_volume_ratio))
        lengths = torch.log(volume)[:, None] / 3.0 + torch.tensor(self.length_offset,
                                                                 device=device)
        angles = torch.tensor(self.angle_mean, device=device).expand(len(num_atoms), 3)
        return torch.cat([lengths, angles.double()], dim=-1).float()

    def sample(self, num_atoms: Tensor, atomic_numbers: Tensor | None = None,
               generator: torch.Generator | None = None) -> Tensor:
        mean = self.mean(num_atoms, atomic_numbers)
        std = torch.tensor(self.length_std + self.angle_std, device=mean.device)
        noise = torch.randn(mean.shape, generator=generator, device=mean.device)
        return mean + std * noise  # [B, 6]

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(data: dict) -> LatticePrior:
        return LatticePrior(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


@dataclass(frozen=True)
class AtomCountPrior:
    """Empirical distribution of atoms per cell in the training data."""

    counts: tuple[int, ...]  # counts[n] = training crystals with n atoms

    @staticmethod
    def fit(num_atoms: Tensor) -> AtomCountPrior:
        return AtomCountPrior(tuple(torch.bincount(num_atoms).tolist()))

    def sample(self, num: int, generator: torch.Generator | None = None) -> Tensor:
        weights = torch.tensor(self.counts, dtype=torch.float64)
        return torch.multinomial(weights, num, replacement=True, generator=generator)

    def to_dict(self) -> dict:
        return {"counts": list(self.counts)}

    @staticmethod
    def from_dict(data: dict) -> AtomCountPrior:
        return AtomCountPrior(tuple(data["counts"]))
