"""Training objective: flow-matching terms plus auxiliary losses, each a pure function.

`training_losses` draws times and prior samples, builds the noisy state, runs the model once
and returns every term (unweighted) and the weighted total, so ablations switch terms by
their lambda alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from autoperi.config import FlowConfig
from autoperi.data.crystal import CrystalBatch
from autoperi.flow.coupling import coupled_targets
from autoperi.flow.model import FlowModel
from autoperi.flow.paths import (
    carried_types,
    lattice_to_y,
    linear_path,
    masked_type_path,
    remove_mean,
    torus_path,
)
from autoperi.geometry.graph import dense_graph
from autoperi.geometry.torus import shortest_displacement, wrap


def torus_velocity_loss(pred: Tensor, target: Tensor, crystal_idx: Tensor, b: int,
                        atoms: Tensor | None = None) -> Tensor:
    """MSE between velocities after removing each crystal's mean (translation gauge),
    over the `atoms` [N] bool given (default all; 0 if none)."""
    target = remove_mean(target, crystal_idx, b)
    if atoms is None:
        return F.mse_loss(pred, target)
    if not bool(atoms.any()):
        return pred.sum() * 0.0
    return F.mse_loss(pred[atoms], target[atoms])


def periodic_chamfer(x_pred: Tensor, x_true: Tensor, lattice: Tensor,
                     num_atoms: Tensor, types: Tensor | None = None) -> Tensor:
    """Symmetric Chamfer distance (Å) between predicted and true atoms of each crystal,
    with periodic (shortest-image) distances in the true lattice; mean over crystals.
    With `types` [N] (shared by both sets) only atoms of the same type are paired."""
    b = len(num_atoms)
    crystal_idx = torch.repeat_interleave(torch.arange(b, device=num_atoms.device), num_atoms)
    true_j, pred_i = dense_graph(num_atoms).edge_index
    delta = shortest_displacement(x_pred[pred_i] - x_true[true_j])
    dist = torch.linalg.norm(torch.einsum("ei,eij->ej", delta, lattice[crystal_idx[pred_i]]),
                             dim=-1)  # [E]
    if types is not None:
        dist = torch.where(types[pred_i] == types[true_j], dist, torch.inf)
    inf = torch.full((len(x_pred),), float("inf"), dtype=dist.dtype, device=dist.device)
    to_true = inf.scatter_reduce(0, pred_i, dist, "amin")  # nearest true atom per prediction
    to_pred = inf.scatter_reduce(0, true_j, dist, "amin")  # nearest prediction per true atom
    per_atom = 0.5 * (to_true + to_pred)
    total = torch.zeros(b, dtype=dist.dtype, device=dist.device).index_add(0, crystal_idx,
                                                                           per_atom)
    return (total / num_atoms).mean()


def masked_mae(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean absolute error over entries where mask is True (0 if none)."""
    if not bool(mask.any()):
        return pred.sum() * 0.0
    return (pred - torch.nan_to_num(target)).abs()[mask].mean()


def symmetry_loss(x_pred: Tensor, types: Tensor, lattice: Tensor, num_atoms: Tensor,
                  ops: Tensor, op_counts: Tensor, generator: torch.Generator) -> Tensor:
    """Type-aware periodic Chamfer distance (Å) between the predicted clean crystal and its
    image under one random space-group operation of the target per crystal (identity
    skipped where the group has more). Zero exactly when the prediction keeps that symmetry.
    ops [M, 3, 4] (R | t on fractional coordinates), op_counts [B]."""
    b = len(num_atoms)
    crystal_idx = torch.repeat_interleave(torch.arange(b, device=num_atoms.device), num_atoms)
    starts = torch.cumsum(op_counts, 0) - op_counts
    u = torch.rand(b, generator=generator).to(op_counts.device)
    pick = torch.where(op_counts > 1, 1 + (u * (op_counts - 1)).long().clamp_max(op_counts - 2),
                       torch.zeros_like(op_counts))
    chosen = ops[starts + pick].to(x_pred.dtype)[crystal_idx]  # [N, 3, 4]
    moved = (chosen[:, :, :3] @ x_pred[:, :, None]).squeeze(-1) + chosen[:, :, 3]
    return periodic_chamfer(moved, x_pred, lattice, num_atoms, types)


def stability_loss(model: FlowModel, frac: Tensor, y: Tensor, type_probs: Tensor,
                   num_atoms: Tensor) -> Tensor:
    """Mean scaled energy that the model's energy head assigns to (predicted) clean crystals.

    The head is evaluated with detached weights, so the gradient moves the generator's
    predictions towards low energy and does not teach the head to predict low values.
    Any differentiable energy per atom (e.g. a pretrained interatomic potential) can take
    the head's place by replacing this function.
    """
    from torch.func import functional_call

    inner = getattr(model, "module", model)
    heads = inner.stats.heads
    if not inner.stats.energy_property:
        raise ValueError("lambda_stability > 0 needs data.energy_property (an energy head)")
    frozen = {k: v.detach() for k, v in inner.named_parameters()}
    frozen.update(dict(inner.named_buffers()))
    ones = torch.ones(len(num_atoms), device=y.device)
    out = functional_call(inner, frozen, (type_probs, frac, y, num_atoms, ones, ones))
    return out.properties[:, heads.index(inner.stats.energy_property)].mean()


def offpath_states(xt: Tensor, lattice: Tensor, crystal_idx: Tensor, t: Tensor, sigma: float,
                   generator: torch.Generator, share: float = 0.25,
                   after: float = 0.7, pairs: float = 0.0) -> tuple[Tensor, Tensor]:
    """Displace the atoms of a random `share` of the crystals with t >= `after` by
    isotropic Gaussian noise of sigma Å (per Cartesian component), less its per-crystal
    mean: a common translation is a gauge the model's velocity cannot express (its mean is
    removed), so it would only add a floor to the Chamfer loss. Returns the new fractional
    coordinates [N, 3] and which crystals were displaced [B]. Sampling leaves the training
    paths (errors accumulate), and atoms that stray late can end on one site; these states
    show the model such strays. A share `pairs` of the displaced crystals also has one atom
    carried most of the way to another (`collision_moves`): two atoms heading for one site,
    the state a late collapse passes through."""
    if not 0.0 <= share <= 1.0 or sigma < 0 or not 0.0 <= pairs <= 1.0:
        raise ValueError(f"flow.offpath_share and offpath_pairs must be in [0, 1] and "
                         f"offpath_sigma >= 0, got {share}, {pairs} and {sigma}")
    b = len(t)
    drawn = torch.rand(b, generator=generator).to(t.device)
    chosen = (drawn < share) & (t >= after)
    cart = sigma * torch.randn(xt.shape, generator=generator).to(xt.device)
    delta = torch.linalg.solve(lattice[crystal_idx].transpose(1, 2).to(xt.dtype),
                               cart.to(xt.dtype))  # frac = cart @ L^-1 (rows are vectors)
    if pairs > 0:  # (no extra draws otherwise: runs without pairs keep their random stream)
        collide = chosen & (torch.rand(b, generator=generator).to(t.device) < pairs)
        delta = delta + collision_moves(xt, crystal_idx, collide, generator)
    delta = remove_mean(delta, crystal_idx, b)
    return torch.where(chosen[crystal_idx, None], wrap(xt + delta), xt), chosen


def collision_moves(xt: Tensor, crystal_idx: Tensor, chosen: Tensor,
                    generator: torch.Generator) -> Tensor:
    """Fractional moves [N, 3] that carry one random atom of each chosen crystal (of two
    atoms or more) 60-100 % of the shortest way to another random atom of it; zero
    elsewhere."""
    b = len(chosen)
    counts = torch.bincount(crystal_idx, minlength=b)
    start = torch.cumsum(counts, 0) - counts
    r = torch.rand(b, 3, generator=generator).to(xt.device)
    first = (r[:, 0] * counts).long().clamp_max(counts - 1)
    other = (first + 1 + (r[:, 1] * (counts - 1)).long()) % counts.clamp_min(1)  # != first
    pick = chosen & (counts > 1)
    i, j = (start + first)[pick], (start + other)[pick]
    moves = torch.zeros_like(xt)
    moves[i] = (0.6 + 0.4 * r[pick, 2, None]).to(xt.dtype) * shortest_displacement(xt[j] - xt[i])
    return moves


def training_losses(model: FlowModel, batch: CrystalBatch, flow: FlowConfig,
                    condition_dropout: float, generator: torch.Generator,
                    symmetry: tuple[Tensor, Tensor] | None = None) -> dict[str, Tensor]:
    """All loss terms for one batch of clean crystals; key "loss" is the weighted total.
    symmetry: (ops [M, 3, 4], counts [B]) of the batch's crystals, for lambda_symmetry."""
    inner = getattr(model, "module", model)  # through a DDP wrapper
    stats, type_path = inner.stats, inner.config.type_path  # type_path checked by FlowModel
    device = batch.frac_coords.device
    b, n = batch.num_crystals, batch.frac_coords.shape[0]
    crystal_idx = batch.crystal_idx

    def rand(*shape):
        return torch.rand(*shape, generator=generator).to(device)

    # Times and which crystals are structure prediction (types given).
    t = rand(b)
    csp = rand(b) < (flow.csp_fraction if flow.generate_types else 1.0)
    t_types = torch.where(csp, torch.ones_like(t), t)

    # Clean data, prior samples, interpolants.
    x1 = batch.frac_coords.float()
    y1 = lattice_to_y(batch.lattice.double()).float()
    types = stats.type_index(batch.atomic_numbers)
    onehot = F.one_hot(types, len(stats.vocab)).float()
    x0 = rand(n, 3)
    if flow.coupling == "ot":  # re-pair atoms of each crystal and shift it (flow/coupling.py)
        x1, types, symmetry = coupled_targets(x0, x1, types, batch.num_atoms, csp[crystal_idx],
                                              symmetry)
        onehot = F.one_hot(types, len(stats.vocab)).float()
    elif flow.coupling != "independent":
        raise ValueError(f"flow.coupling must be 'independent' or 'ot', got {flow.coupling!r}")
    y0_denovo = stats.lattice_prior.sample(batch.num_atoms, None, generator).to(device)
    y0_csp = stats.lattice_prior.sample(batch.num_atoms, batch.atomic_numbers, generator).to(device)
    y0 = torch.where(csp[:, None], y0_csp, y0_denovo)
    if type_path in ("gaussian", "masked_gaussian"):
        noise = torch.randn(n, len(stats.vocab), generator=generator).to(device)
    xt, u_frac = torus_path(x0, x1, t[crystal_idx])
    yt, u_lattice = linear_path(y0, y1, t)
    strayed = torch.zeros(b, dtype=torch.bool, device=device)
    if flow.lambda_offpath > 0:
        xt, strayed = offpath_states(xt, batch.lattice.float(), crystal_idx, t,
                                     flow.offpath_sigma, generator, flow.offpath_share,
                                     flow.offpath_after, flow.offpath_pairs)
    if type_path == "gaussian":
        type_t, _ = linear_path(noise, onehot, t_types[crystal_idx])
        revealed = torch.zeros(n, dtype=torch.bool, device=device)
    else:  # masked: only hidden atoms have anything to predict
        type_t, revealed = masked_type_path(onehot, t_types[crystal_idx], generator,
                                            inner.config.hidden_noise)
        if type_path == "masked_gaussian":
            type_t = carried_types(type_t, noise, t_types[crystal_idx])

    # Conditions: known values, hidden per crystal (all at once) or per property.
    names = stats.conditions
    scaled = stats.scaler.transform({k: batch.properties[k].float() for k in stats.heads})
    values = (torch.stack([scaled[k] for k in names], 1) if names
              else torch.zeros(b, 0, device=device))
    drop_all = rand(b) < condition_dropout
    drop_one = rand(b, len(names)) < condition_dropout
    mask = ~torch.isnan(values) & ~drop_all[:, None] & ~drop_one

    out = model(type_t, xt, yt, batch.num_atoms, t, t_types, values, mask)
    on_path = ~strayed[crystal_idx]
    losses = {
        "frac": torus_velocity_loss(out.frac_velocity, u_frac, crystal_idx, b, on_path),
        "lattice": F.mse_loss(out.lattice_velocity, u_lattice),
    }
    denovo_atoms = ~csp[crystal_idx] & ~revealed
    if flow.generate_types and bool(denovo_atoms.any()):
        losses["types"] = F.cross_entropy(out.type_logits[denovo_atoms], types[denovo_atoms])
    else:
        losses["types"] = out.type_logits.sum() * 0.0

    # Predicted clean structure: one Euler step to t = 1 (the gauge mean restored).
    gauge = u_frac - remove_mean(u_frac, crystal_idx, b)
    x1_pred = wrap(xt + (1 - t)[crystal_idx, None] * (out.frac_velocity + gauge))
    losses["recon"] = periodic_chamfer(x1_pred, x1, batch.lattice.float(), batch.num_atoms)
    if bool(strayed.any()):  # strayed crystals: is every site filled, by the right element?
        atoms = strayed[crystal_idx]
        losses["offpath"] = periodic_chamfer(x1_pred[atoms], x1[atoms],
                                             batch.lattice.float()[strayed],
                                             batch.num_atoms[strayed], types[atoms])
    else:
        losses["offpath"] = out.properties.sum() * 0.0

    # Property heads learn from crystals that saw no condition (no leak of the answer),
    # weighted towards clean states where a prediction is meaningful.
    if stats.heads:
        target = torch.stack([scaled[k] for k in stats.heads], 1)
        known = ~torch.isnan(target) & (drop_all | (len(names) == 0))[:, None]
        weight = t[:, None].expand_as(target)
        losses["property"] = masked_mae(out.properties * weight, target * weight, known)
    else:
        losses["property"] = out.properties.sum() * 0.0

    # Stability surrogate: the energy of the predicted clean crystal (types as predicted
    # for de novo crystals, given for CSP ones). Costs a second forward pass, so only if on.
    if flow.lambda_stability > 0:
        y1_pred = yt + (1 - t)[:, None] * out.lattice_velocity
        probs = torch.where((csp[crystal_idx] | revealed)[:, None], onehot,
                            torch.softmax(out.type_logits, dim=-1))
        losses["stability"] = stability_loss(model, x1_pred, y1_pred, probs, batch.num_atoms)
    else:
        losses["stability"] = out.properties.sum() * 0.0

    if flow.lambda_symmetry > 0:
        if symmetry is None:
            raise ValueError("lambda_symmetry > 0 needs the crystals' symmetry operations")
        ops, counts = (x.to(device) for x in symmetry)
        losses["symmetry"] = symmetry_loss(x1_pred, types, batch.lattice.float(),
                                           batch.num_atoms, ops, counts, generator)
    else:
        losses["symmetry"] = out.properties.sum() * 0.0

    lambdas = {"frac": flow.lambda_frac, "lattice": flow.lambda_lattice,
               "types": flow.lambda_types, "recon": flow.lambda_recon,
               "property": flow.lambda_property, "stability": flow.lambda_stability,
               "symmetry": flow.lambda_symmetry, "offpath": flow.lambda_offpath}
    losses["loss"] = sum(lambdas[k] * losses[k] for k in lambdas)
    return losses
