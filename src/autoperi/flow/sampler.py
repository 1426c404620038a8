"""ODE integration of the learned flow from the prior (t = 0) to crystals (t = 1).

Euler or Heun steps on a uniform grid, classifier-free guidance, element constraints, and
an optional trajectory. Types are generated (de novo) or given (CSP).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from autoperi.data.crystal import CrystalBatch
from autoperi.flow.model import FlowModel
from autoperi.flow.paths import y_to_lattice
from autoperi.geometry.torus import wrap


@dataclass
class FlowState:
    type_state: Tensor  # [N, K]
    frac_coords: Tensor  # [N, 3]
    y: Tensor  # [B, 6]


@dataclass(frozen=True)
class Request:
    """What to generate. num_atoms [B]; atomic_numbers [N] for CSP (None: de novo);
    cond_values/cond_mask [B, P] scaled targets; allowed [K] bool restricts types."""

    num_atoms: Tensor
    atomic_numbers: Tensor | None = None
    cond_values: Tensor | None = None
    cond_mask: Tensor | None = None
    allowed: Tensor | None = None


@torch.no_grad()
def sample_flow(model: FlowModel, request: Request, steps: int = 50, method: str = "heun",
                guidance: float = 1.0, generator: torch.Generator | None = None,
                trajectory: bool = False) -> tuple[CrystalBatch, list[CrystalBatch]]:
    """Integrate the flow; returns the crystals and (if asked) every intermediate state."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if method not in ("euler", "heun"):
        raise ValueError(f"method must be 'euler' or 'heun', got {method!r}")
    stats, device = model.stats, next(model.parameters()).device
    num_atoms = request.num_atoms.to(device)
    b, n, k = len(num_atoms), int(num_atoms.sum()), len(stats.vocab)
    csp = request.atomic_numbers is not None

    def randn(*shape):
        return torch.randn(*shape, generator=generator).to(device)

    if csp:
        numbers = request.atomic_numbers.to(device)
        type_state = F.one_hot(stats.type_index(numbers), k).float()
        y0 = stats.lattice_prior.sample(num_atoms.cpu(), numbers.cpu(), generator)
    else:
        type_state = randn(n, k)
        y0 = stats.lattice_prior.sample(num_atoms.cpu(), None, generator)
    state = FlowState(type_state, torch.rand(n, 3, generator=generator).to(device), y0.to(device))
    t_type_fixed = torch.ones(b, device=device) if csp else None
    penalty = None
    if request.allowed is not None:
        penalty = torch.where(request.allowed.to(device), 0.0, float("-inf"))

    def velocity(s: FlowState, t: float) -> FlowState:
        tt = torch.full((b,), t, device=device)
        t_types = t_type_fixed if csp else tt

        def run(values, mask):
            return model(s.type_state, s.frac_coords, s.y, num_atoms, tt, t_types, values, mask)

        cond = run(request.cond_values, request.cond_mask)
        parts = [cond.frac_velocity, cond.lattice_velocity, cond.type_logits]
        if request.cond_mask is not None and guidance != 1.0:
            free = run(None, None)
            parts = [u + guidance * (c - u) for c, u in
                     zip(parts, [free.frac_velocity, free.lattice_velocity, free.type_logits])]
        v_frac, v_lat, logits = parts
        if csp:
            v_type = torch.zeros_like(s.type_state)
        else:
            if penalty is not None:
                logits = logits + penalty
            clean = torch.softmax(logits, dim=-1)
            v_type = (clean - s.type_state) / max(1.0 - t, 1e-3)
        return FlowState(v_type, v_frac, v_lat)

    def step(s: FlowState, v: FlowState, dt: float) -> FlowState:
        return FlowState(s.type_state + dt * v.type_state,
                         wrap(s.frac_coords + dt * v.frac_coords), s.y + dt * v.y)

    states = []
    dt = 1.0 / steps
    for k_step in range(steps):
        t = k_step * dt
        v = velocity(state, t)
        if method == "heun" and k_step < steps - 1:
            guess = step(state, v, dt)
            v2 = velocity(guess, t + dt)
            v = FlowState(*(0.5 * (a + c) for a, c in
                            zip((v.type_state, v.frac_coords, v.y),
                                (v2.type_state, v2.frac_coords, v2.y))))
        state = step(state, v, dt)
        if trajectory:
            states.append(_to_batch(model, state, num_atoms, request, penalty))
    final = _to_batch(model, state, num_atoms, request, penalty)
    return final, states


def _to_batch(model: FlowModel, state: FlowState, num_atoms: Tensor, request: Request,
              penalty: Tensor | None) -> CrystalBatch:
    if request.atomic_numbers is not None:
        numbers = request.atomic_numbers.to(num_atoms.device)
    else:
        scores = state.type_state if penalty is None else state.type_state + penalty
        numbers = torch.tensor(model.stats.vocab, device=num_atoms.device)[scores.argmax(-1)]
    return CrystalBatch(numbers, state.frac_coords.clone(), y_to_lattice(state.y.double()).float(),
                        num_atoms)
