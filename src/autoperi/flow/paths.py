"""Per-component interpolants between prior (t = 0) and data (t = 1) and their velocities.

* fractional coordinates: geodesics on the flat torus, constant velocity;
* lattice: straight lines in y = (log a, log b, log c, alpha, beta, gamma), a rotation-
  invariant parametrisation (lengths in Å, angles in radians);
* atom types: straight lines from Gaussian noise to one-hot vectors over the vocabulary
  ("gaussian"), or a masked (absorbing-state) discrete path: each atom is hidden, a zero
  vector, until a random time and then shows its one-hot type ("masked"), or the masked
  path carried on the gaussian one ("masked_gaussian"): the network sees t R + (1 - t) noise,
  R the masked state, so hidden atoms are fading noise and revealed ones lie on the
  gaussian path to their type (`carried_types`).
"""

import math

import torch
from torch import Tensor

from autoperi.geometry.lattice import lattice_to_params, params_to_lattice
from autoperi.geometry.torus import shortest_displacement, wrap

MIN_ANGLE, MAX_ANGLE = math.radians(20.0), math.radians(160.0)


def lattice_to_y(lattice: Tensor) -> Tensor:
    """[B, 3, 3] -> [B, 6] (log lengths, angles in radians)."""
    lengths, angles = lattice_to_params(lattice)
    return torch.cat([torch.log(lengths), angles], dim=-1)


def y_to_lattice(y: Tensor) -> Tensor:
    """[B, 6] -> [B, 3, 3] in the standard orientation; angles clamped to [20, 160] degrees
    and the cell kept at least 0.1 c high, so every state of a flow is a real cell."""
    return params_to_lattice(torch.exp(y[:, :3]), y[:, 3:].clamp(MIN_ANGLE, MAX_ANGLE), 0.1)


def torus_path(x0: Tensor, x1: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """Point at time t [N] on the shortest geodesic from x0 to x1 [N, 3], and its velocity."""
    velocity = shortest_displacement(x1 - x0)
    return wrap(x0 + t[:, None] * velocity), velocity


def linear_path(x0: Tensor, x1: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """(1 - t) x0 + t x1 for t [rows], and its velocity x1 - x0."""
    return x0 + t[:, None] * (x1 - x0), x1 - x0


TYPE_PATHS = ("gaussian", "masked", "masked_gaussian")
MASKED_PATHS = ("masked", "masked_gaussian")  # types decided by reveals


def carried_types(revealed_state: Tensor, noise: Tensor, t: Tensor) -> Tensor:
    """Network input of the masked_gaussian path at per-atom type times t [N]:
    t R + (1 - t) noise, R [N, K] the masked state (one-hot rows revealed, zeros hidden).
    Each atom keeps its own noise [N, K] along the way, so two atoms of one element in one
    place still differ until t = 1 (the gaussian path's symmetry breaking); at t = 1 (CSP,
    committed types) the input is R."""
    return t[:, None] * revealed_state + (1.0 - t[:, None]) * noise


def masked_type_path(onehot: Tensor, t: Tensor, generator: torch.Generator | None = None,
                     noise: float = 0.0) -> tuple[Tensor, Tensor]:
    """State of a masked type path at per-atom times t [N]: each atom is revealed with
    probability t (independently), a revealed atom shows its one-hot row, a hidden one zeros
    (or Gaussian noise of scale `noise`, never an exact one-hot row). Returns the state
    [N, K] and which atoms are revealed [N] (all of them at t = 1)."""
    drawn = torch.rand(len(t), generator=generator).to(t.device)
    revealed = drawn < t
    hidden = torch.zeros_like(onehot)
    if noise > 0:
        hidden = noise * torch.randn(onehot.shape, generator=generator).to(onehot)
    return torch.where(revealed[:, None], onehot, hidden), revealed


def reveal_probability(t: float, dt: float) -> float:
    """P(a hidden atom is revealed in [t, t + dt]) given hidden at t, when P(revealed by t)
    = t: dt / (1 - t); 1 on the last step."""
    return 1.0 if t + dt >= 1.0 - 1e-9 else dt / (1.0 - t)


def remove_mean(v: Tensor, crystal_idx: Tensor, num_crystals: int) -> Tensor:
    """v minus its per-crystal mean: a common translation of all atoms is a gauge."""
    total = torch.zeros(num_crystals, v.shape[1], dtype=v.dtype, device=v.device)
    total = total.index_add(0, crystal_idx, v)
    count = torch.bincount(crystal_idx, minlength=num_crystals).clamp_min(1).to(v.dtype)
    return v - (total / count[:, None])[crystal_idx]
