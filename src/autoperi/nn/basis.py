"""Edge bases: radial functions of distances and Fourier features of fractional offsets."""

import itertools
import math

import torch
from torch import Tensor, nn


class RadialBasis(nn.Module):
    """Gaussians on [0, cutoff] times a smooth cosine envelope that reaches 0 at the cutoff."""

    def __init__(self, num_basis: int, cutoff: float):
        super().__init__()
        self.cutoff = cutoff
        self.register_buffer("centers", torch.linspace(0.0, cutoff, num_basis))
        self.width = cutoff / num_basis

    def forward(self, distance: Tensor) -> Tensor:
        gauss = torch.exp(-0.5 * ((distance[:, None] - self.centers) / self.width) ** 2)
        return gauss * cosine_cutoff(distance, self.cutoff)[:, None]  # [E, R]


def cosine_cutoff(distance: Tensor, cutoff: float) -> Tensor:
    """0.5 (cos(pi d / c) + 1) inside the cutoff, 0 outside; smooth at d = c."""
    inside = distance < cutoff
    return torch.where(inside, 0.5 * (torch.cos(math.pi * distance / cutoff) + 1.0), 0.0)


def wave_vectors(num_frequencies: int) -> Tensor:
    """Integer wave vectors k: m * e_d for m = 1..F on each axis, plus the 10 lattice
    diagonals of {-1, 0, 1}^3 not on an axis (one of each +/- pair), [3F + 10, 3]."""
    axis = [m * torch.eye(3, dtype=torch.long)[d] for d in range(3)
            for m in range(1, num_frequencies + 1)]
    diagonals = []
    for k in itertools.product((-1, 0, 1), repeat=3):
        v = torch.tensor(k)
        if (v != 0).sum() >= 2 and tuple(v) > tuple(-v):
            diagonals.append(v)
    return torch.stack(axis + diagonals)


class FourierFeatures(nn.Module):
    """sin and cos of 2 pi k . delta_f for a set of integer wave vectors k.

    Integer k makes the features identical for every periodic image of a pair and for any
    common translation of all atoms: periodicity is built in, not learned.
    """

    def __init__(self, num_frequencies: int):
        super().__init__()
        self.register_buffer("k", wave_vectors(num_frequencies).float())

    @property
    def dim(self) -> int:
        return 2 * self.k.shape[0]

    def forward(self, delta_frac: Tensor) -> Tensor:
        # Elementwise, not a matmul: autocast would round the phases to bf16.
        k = self.k.to(delta_frac.dtype)
        phase = 2.0 * math.pi * (delta_frac[:, None, :] * k[None]).sum(-1)  # [E, K]
        return torch.cat([torch.sin(phase), torch.cos(phase)], dim=-1)  # [E, 2K]
