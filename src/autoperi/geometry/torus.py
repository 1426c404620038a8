"""The flat unit torus [0, 1)^3 on which fractional coordinates live."""

import torch
from torch import Tensor


def wrap(frac_coords: Tensor) -> Tensor:
    """Fractional coordinates mapped into [0, 1). The only place that applies `% 1`."""
    wrapped = torch.remainder(frac_coords, 1.0)
    # remainder(-1e-9, 1) rounds to exactly 1.0 in float32; fold it back to 0.
    return torch.where(wrapped >= 1.0, wrapped - 1.0, wrapped)


def shortest_displacement(delta: Tensor) -> Tensor:
    """Representative of delta on the unit torus, in [-0.5, 0.5)."""
    return delta - torch.floor(delta + 0.5)
