"""ODE integration of the learned flow from the prior (t = 0) to crystals (t = 1).

Euler or Heun steps on a uniform grid, classifier-free guidance, element constraints, and
an optional trajectory. Types are generated (de novo) or given (CSP).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from autoperi.data.crystal import CrystalBatch
from autoperi.data.features import covalent_radii
from autoperi.flow.model import FlowModel
from autoperi.flow.paths import MASKED_PATHS, carried_types, reveal_probability, y_to_lattice
from autoperi.geometry.clash import ClashFloor, resolve_clashes
from autoperi.geometry.torus import wrap


@dataclass
class FlowState:
    type_state: Tensor  # [N, K]
    frac_coords: Tensor  # [N, 3]
    y: Tensor  # [B, 6]


@dataclass(frozen=True)
class Request:
    """What to generate. num_atoms [B]; atomic_numbers [N] for CSP (None: de novo);
    cond_values/cond_mask [B, P] scaled targets; allowed [K] bool restricts types;
    composition_check(atomic numbers of one crystal) -> bool: accept only such compositions
    when the types are committed (see `sample_flow`)."""

    num_atoms: Tensor
    atomic_numbers: Tensor | None = None
    cond_values: Tensor | None = None
    cond_mask: Tensor | None = None
    allowed: Tensor | None = None
    composition_check: Callable[[Sequence[int]], bool] | None = None


@torch.no_grad()
def sample_flow(model: FlowModel, request: Request, steps: int = 50, method: str = "heun",
                guidance: float = 1.0, generator: torch.Generator | None = None,
                trajectory: bool = False, commit_at: float | None = None,
                jump_at: float = 1.0, clash: ClashFloor | None = None
                ) -> tuple[CrystalBatch, list[CrystalBatch]]:
    """Integrate the flow; returns the crystals and (if asked) every intermediate state.

    commit_at (de novo): at the first step with t >= commit_at (or the last step before
    t = 1, whichever comes first) the atom types are decided
    from the model's predicted clean types (`decode_types`, honouring
    `request.composition_check`) and held fixed; the remaining steps move only the geometry,
    as in CSP, so positions and lattice settle around the final types. None: types flow
    until t = 1 and are read off by argmax (gaussian type path) or are revealed one atom at
    a time, each drawn from the model's predicted clean types (masked type paths).
    jump_at < 1: the `steps` steps cover [0, jump_at], then one Euler step jumps to t = 1
    (the model's clean prediction from jump_at).
    clash (`geometry.clash.ClashFloor`, None = off): after every step that ends at t >= clash.after,
    atoms closer than their floor are pushed apart along their axis (`resolve_clashes`);
    an atom not yet revealed counts as the element the model predicts for it. A
    sampling-time physical prior, not part of the learned model: it keeps two atoms off one
    site, but measured on Perov-5 the flow does not then move one of them to an empty site
    (BENCHMARKS.md, "Masked type path").
    """
    if not 0.0 < jump_at <= 1.0:
        raise ValueError(f"jump_at must be in (0, 1], got {jump_at}")
    if commit_at is not None and not 0.0 <= commit_at < 1.0:
        raise ValueError(f"commit_at must be in [0, 1), got {commit_at}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if method not in ("euler", "heun"):
        raise ValueError(f"method must be 'euler' or 'heun', got {method!r}")
    clash = clash or ClashFloor()
    stats, device = model.stats, next(model.parameters()).device
    num_atoms = request.num_atoms.to(device)
    b, n, k = len(num_atoms), int(num_atoms.sum()), len(stats.vocab)
    csp = request.atomic_numbers is not None
    masked = not csp and model.config.type_path in MASKED_PATHS

    def randn(*shape):
        return torch.randn(*shape, generator=generator).to(device)

    if csp:
        numbers = request.atomic_numbers.to(device)
        type_state = F.one_hot(stats.type_index(numbers), k).float()
        y0 = stats.lattice_prior.sample(num_atoms.cpu(), numbers.cpu(), generator)
    else:
        if not masked:
            type_state = randn(n, k)
        elif model.config.hidden_noise > 0:  # hidden atoms as noise that tells them apart
            type_state = model.config.hidden_noise * randn(n, k)
        else:  # hidden atoms as zeros (no draws: the random stream of older models stays)
            type_state = torch.zeros(n, k, device=device)
        y0 = stats.lattice_prior.sample(num_atoms.cpu(), None, generator)
    # masked_gaussian: each atom's own noise, carried into the network input until t = 1
    carrier = randn(n, k) if masked and model.config.type_path == "masked_gaussian" else None
    state = FlowState(type_state, torch.rand(n, 3, generator=generator).to(device), y0.to(device))
    t_type_fixed = torch.ones(b, device=device)
    crystal_idx = torch.repeat_interleave(torch.arange(b, device=device), num_atoms)
    penalty = None
    if request.allowed is not None:
        penalty = torch.where(request.allowed.to(device), 0.0, float("-inf"))
    fixed_types = csp  # types are given (CSP) or committed

    def velocity(s: FlowState, t: float) -> FlowState:
        tt = torch.full((b,), t, device=device)
        t_types = t_type_fixed if fixed_types else tt

        types_in = s.type_state
        if carrier is not None and not fixed_types:
            types_in = carried_types(s.type_state, carrier, t_types[crystal_idx])

        def run(values, mask):
            return model(types_in, s.frac_coords, s.y, num_atoms, tt, t_types, values, mask)

        cond = run(request.cond_values, request.cond_mask)
        parts = [cond.frac_velocity, cond.lattice_velocity, cond.type_logits]
        if request.cond_mask is not None and guidance != 1.0:
            free = run(None, None)
            parts = [u + guidance * (c - u) for c, u in
                     zip(parts, [free.frac_velocity, free.lattice_velocity, free.type_logits])]
        v_frac, v_lat, logits = parts
        if penalty is not None:
            logits = logits + penalty
        if fixed_types or masked:  # masked types change by reveals, not by a velocity
            v_type = torch.zeros_like(s.type_state)
        else:
            clean = torch.softmax(logits, dim=-1)
            v_type = (clean - s.type_state) / max(1.0 - t, 1e-3)
        return FlowState(v_type, v_frac, v_lat), logits

    def step(s: FlowState, v: FlowState, dt: float) -> FlowState:
        return FlowState(s.type_state + dt * v.type_state,
                         wrap(s.frac_coords + dt * v.frac_coords), s.y + dt * v.y)

    states = []
    grid = [jump_at * k / steps for k in range(steps + 1)] + ([1.0] if jump_at < 1 else [])
    vocab = torch.tensor(stats.vocab)
    if clash.scale > 0:  # covalent radius per vocabulary entry; 0 where the table has none
        contact_radii = torch.nan_to_num(torch.as_tensor(covalent_radii()[list(stats.vocab)]),
                                         nan=0.0).float().to(device)
    # the types are committed at the last step start before t = 1 at the latest
    commit_time = None if commit_at is None else min(commit_at, grid[-2])
    for k_step in range(len(grid) - 1):
        t, dt = grid[k_step], grid[k_step + 1] - grid[k_step]
        v, logits = velocity(state, t)
        if not fixed_types and commit_time is not None and t >= commit_time - 1e-9:
            log_probs = torch.log_softmax(logits, -1)
            if masked:  # revealed atoms keep their element unless the check needs a change
                log_probs = torch.where(~_hidden(state.type_state)[:, None],
                                        torch.where(state.type_state > 0, 0.0,
                                                    log_probs - REVEALED_CHANGE_COST),
                                        log_probs)
            types = decode_types(log_probs.cpu(), num_atoms.cpu(), vocab,
                                 request.composition_check)
            state = FlowState(F.one_hot(types, k).float().to(device), state.frac_coords, state.y)
            fixed_types = True
            v, _ = velocity(state, t)  # geometry velocity at the committed types
        if masked and not fixed_types:  # reveals at t, before the step's second evaluation
            state = FlowState(_reveal(state.type_state, logits, reveal_probability(t, dt),
                                      generator), state.frac_coords, state.y)
        if method == "heun" and k_step < len(grid) - 2:
            guess = step(state, v, dt)
            v2, _ = velocity(guess, t + dt)
            v = FlowState(*(0.5 * (a + c) for a, c in
                            zip((v.type_state, v.frac_coords, v.y),
                                (v2.type_state, v2.frac_coords, v2.y))))
        state = step(state, v, dt)
        if clash.active and t + dt >= clash.after - 1e-9:
            radii = None
            if clash.scale > 0:
                index = state.type_state.argmax(-1)
                if not fixed_types:  # the model's element for atoms not decided yet
                    predicted = logits.argmax(-1)
                    index = torch.where(_hidden(state.type_state), predicted, index) if masked \
                        else predicted
                radii = clash.scale * contact_radii[index]
            frac = resolve_clashes(state.frac_coords, y_to_lattice(state.y), num_atoms,
                                   clash.distance, radii)
            state = FlowState(state.type_state, frac, state.y)
        if trajectory:
            states.append(_to_batch(model, state, num_atoms, request, penalty, logits))
    final = _to_batch(model, state, num_atoms, request, penalty)
    return final, states


# log-probability cost of changing an already revealed atom when decoding under a
# composition check: such atoms change only if no choice for the hidden ones passes (the
# model's logits for revealed atoms are not trained, so they only order the alternatives)
REVEALED_CHANGE_COST = 1e3


def _hidden(type_state: Tensor) -> Tensor:
    """Atoms of a masked type path not yet revealed (rows that are not exact one-hots:
    zeros or noise), [N] bool."""
    ones, zeros = (type_state == 1).sum(-1), (type_state == 0).sum(-1)
    return ~((ones == 1) & (zeros == type_state.shape[1] - 1))


def _reveal(type_state: Tensor, logits: Tensor, probability: float,
            generator: torch.Generator | None) -> Tensor:
    """Reveal each hidden atom with `probability`, as an element drawn from softmax(logits)
    (forbidden elements have logit -inf); revealed atoms keep theirs."""
    hidden = _hidden(type_state)
    drawn = torch.rand(len(hidden), generator=generator).to(hidden.device) < probability
    probs = torch.softmax(logits.float(), -1).cpu()
    pick = torch.multinomial(probs, 1, generator=generator).squeeze(-1).to(hidden.device)
    new = F.one_hot(pick, type_state.shape[1]).to(type_state.dtype)
    return torch.where((hidden & drawn)[:, None], new, type_state)


def decode_types(log_probs: Tensor, num_atoms: Tensor, vocab: Tensor,
                 check: Callable[[Sequence[int]], bool] | None = None, top: int = 4,
                 budget: int = 256) -> Tensor:
    """Type index per atom [N] from log-probabilities [N, K]: per crystal the most probable
    assignment whose atomic numbers pass `check` (all pass when None).

    Assignments are visited best first (the score is a sum over atoms, so the k best come
    from a heap over "move atom i to its next-best type" steps among each atom's `top`
    types); after `budget` rejected compositions (assignments that only permute the types of
    a rejected one are not checked again) the crystal keeps its most probable assignment.
    """
    best = log_probs.argmax(-1)
    if check is None:
        return best
    order = log_probs.topk(min(top, log_probs.shape[1]), dim=-1)
    out = best.clone()
    start = 0
    for n in num_atoms.tolist():
        scores = order.values[start:start + n].double().numpy()
        choices = order.indices[start:start + n].numpy()
        found = _best_valid(scores, choices, vocab, check, budget)
        if found is not None:
            out[start:start + n] = torch.as_tensor(found)
        start += n
    return out


def _best_valid(scores, choices, vocab, check, budget):
    """Best-first search over rank vectors (one rank per atom, 0 = its best type)."""
    n, top = scores.shape
    first = (0,) * n
    heap = [(-scores[:, 0].sum(), first)]
    seen = {first}
    rejected: set[tuple] = set()
    for _ in range(budget * 16):  # repeats of a rejected composition are nearly free
        if not heap or len(rejected) >= budget:
            return None
        negative, ranks = heapq.heappop(heap)
        types = choices[np.arange(n), np.array(ranks)]
        composition = tuple(sorted(types.tolist()))
        if composition not in rejected:
            if check(vocab[types].tolist()):
                return types
            rejected.add(composition)
        for i in range(n):
            if ranks[i] + 1 < top and np.isfinite(scores[i, ranks[i] + 1]):
                nxt = ranks[:i] + (ranks[i] + 1,) + ranks[i + 1:]
                if nxt not in seen:
                    seen.add(nxt)
                    gain = scores[i, ranks[i]] - scores[i, ranks[i] + 1]
                    heapq.heappush(heap, (negative + gain, nxt))
    return None


def _to_batch(model: FlowModel, state: FlowState, num_atoms: Tensor, request: Request,
              penalty: Tensor | None, logits: Tensor | None = None) -> CrystalBatch:
    """The state as crystals; atoms still hidden (masked path, trajectory frames) show the
    element the model currently predicts for them (`logits`)."""
    if request.atomic_numbers is not None:
        numbers = request.atomic_numbers.to(num_atoms.device)
    else:
        scores = state.type_state
        if logits is not None:
            scores = torch.where(_hidden(state.type_state)[:, None], logits, scores)
        scores = scores if penalty is None else scores + penalty
        numbers = torch.tensor(model.stats.vocab, device=num_atoms.device)[scores.argmax(-1)]
    return CrystalBatch(numbers, state.frac_coords.clone(), y_to_lattice(state.y.double()).float(),
                        num_atoms)
