import itertools

import numpy as np
import torch
from test_flow import stats_for

from autoperi.config import FlowConfig, ModelConfig
from autoperi.data.crystal import CrystalBatch
from autoperi.flow.coupling import coupled_targets, coupling_cost, ot_coupling, shift_operations
from autoperi.flow.losses import symmetry_loss, training_losses
from autoperi.flow.model import FlowModel
from autoperi.geometry.torus import wrap
from autoperi.testing import canonical_crystals, random_batch


def _targets(x1, perm, shift, num_atoms):
    crystal_idx = torch.repeat_interleave(torch.arange(len(num_atoms)), num_atoms)
    return wrap(x1[perm] + shift[crystal_idx])


def test_a_permuted_shifted_copy_of_the_noise_is_recovered_exactly():
    batch = random_batch(num_crystals=5, max_atoms=7, seed=1)
    x0, n = batch.frac_coords, batch.num_atoms
    g = torch.Generator().manual_seed(0)
    perm_true = torch.cat([s + torch.randperm(int(k), generator=g)
                           for s, k in zip(torch.cumsum(n, 0) - n, n)])
    shift_true = torch.rand(len(n), 3, generator=g, dtype=x0.dtype)
    crystal_idx = torch.repeat_interleave(torch.arange(len(n)), n)
    x1 = torch.empty_like(x0)
    x1[perm_true] = wrap(x0 + shift_true[crystal_idx])  # data = noise moved and relabelled
    groups = torch.zeros(len(x0), dtype=torch.long)
    perm, shift = ot_coupling(x0, x1, n, groups)
    targets = _targets(x1, perm, shift, n)
    d = targets - x0
    assert torch.allclose(d - torch.floor(d + 0.5), torch.zeros_like(d), atol=1e-9)
    assert torch.equal(perm, perm_true)


def test_coupling_is_a_permutation_within_groups_and_beats_every_unshifted_pairing():
    batch = random_batch(num_crystals=6, max_atoms=5, seed=2)
    n = batch.num_atoms
    x0 = torch.rand(len(batch.frac_coords), 3, generator=torch.Generator().manual_seed(5),
                    dtype=torch.float64)
    x1 = batch.frac_coords
    groups = batch.atomic_numbers % 2  # two groups
    perm, shift = ot_coupling(x0, x1, n, groups)
    targets = _targets(x1, perm, shift, n)
    start = 0
    for k in n.tolist():
        sl = slice(start, start + k)
        local = perm[sl] - start
        assert sorted(local.tolist()) == list(range(k))  # a permutation of the crystal
        assert torch.equal(groups[perm[sl]], groups[sl])  # within groups
        ours = coupling_cost(x0[sl], targets[sl])
        for p in itertools.permutations(range(k)):  # oracle: every allowed pairing, no shift
            p = torch.tensor(p)
            if torch.equal(groups[sl][p], groups[sl]):
                d = x1[sl][p] - x0[sl]
                assert ours <= ((d - torch.floor(d + 0.5)) ** 2).sum() + 1e-9
        start += k


def test_shifted_operations_are_symmetries_of_the_shifted_crystal():
    from autoperi.data.clean import clean_with_symmetry

    structure, ops = clean_with_symmetry(canonical_crystals()["perovskite_SrTiO3"])
    batch = CrystalBatch.from_structures([structure])
    ops_t, counts = torch.from_numpy(ops), torch.tensor([len(ops)])
    shift = torch.tensor([[0.13, 0.41, 0.77]])
    moved = wrap(batch.frac_coords + shift)
    g = torch.Generator().manual_seed(0)
    args = (batch.atomic_numbers, batch.lattice, batch.num_atoms)
    new_ops = shift_operations(ops_t, counts, shift)
    for _ in range(5):
        assert symmetry_loss(moved, *args, new_ops, counts, g) < 1e-5
    # the old operations do not fit the moved crystal (the shift is not a symmetry)
    old = np.mean([float(symmetry_loss(moved, *args, ops_t, counts, g)) for _ in range(10)])
    assert old > 0.1


def test_coupled_targets_move_types_with_positions_and_ops_with_the_shift():
    from autoperi.data.clean import clean_with_symmetry

    structure, ops = clean_with_symmetry(canonical_crystals()["perovskite_SrTiO3"])
    batch = CrystalBatch.from_structures([structure, structure])
    types, n = batch.atomic_numbers, batch.num_atoms
    x0 = torch.rand(len(types), 3, generator=torch.Generator().manual_seed(2),
                    dtype=batch.frac_coords.dtype)
    ops_t = torch.from_numpy(np.concatenate([ops, ops]))
    counts = torch.tensor([len(ops), len(ops)])
    given = torch.tensor([True] * 5 + [False] * 5)  # crystal 0 CSP, crystal 1 de novo
    x1, new_types, (new_ops, _) = coupled_targets(x0, batch.frac_coords, types, n, given,
                                                  (ops_t, counts))
    g = torch.Generator().manual_seed(0)
    for c in range(2):
        sl = slice(5 * c, 5 * c + 5)
        orig, orig_types, new = batch.frac_coords[sl], types[sl], x1[sl]
        # one common shift, read off the single Sr atom, carries every (element, position)
        # pair of the data onto a coupled atom of the same element
        sr = 38
        shift = new[new_types[sl] == sr][0] - orig[orig_types == sr][0]
        d = new[:, None, :] - wrap(orig + shift)[None, :, :]
        close = (d - torch.floor(d + 0.5)).abs().amax(-1) < 1e-6  # [coupled, data]
        same = new_types[sl][:, None] == orig_types[None, :]
        assert torch.equal((close & same).sum(1), torch.ones(5, dtype=torch.long))
        assert torch.equal((close & same).sum(0), torch.ones(5, dtype=torch.long))
        # the shifted operations are symmetries of the coupled crystal
        crystal_ops = new_ops[len(ops) * c:len(ops) * (c + 1)]
        args = (new_types[sl], batch.lattice[c:c + 1], n[:1])
        assert symmetry_loss(new, *args, crystal_ops, counts[:1], g) < 1e-5
    assert sorted(new_types[:5].tolist()) == sorted(types[:5].tolist())
    # CSP atoms keep their species in place (pairing within species only)
    assert torch.equal(new_types[:5], types[:5])


def test_ot_type_path_ends_at_the_types_the_loss_asks_for(monkeypatch):
    import autoperi.flow.losses as losses

    batch = CrystalBatch.from_structures(list(canonical_crystals().values()) * 4)
    stats = stats_for(batch)
    torch.manual_seed(0)
    model = FlowModel(ModelConfig(hidden_dim=16, num_layers=1), stats)
    seen = {}
    real_path, real_ce = losses.linear_path, losses.F.cross_entropy

    def path(x0, x1, t):
        if x1.shape[-1] == len(stats.vocab):  # the type path (the lattice one has 6 columns)
            seen["onehot"] = x1
        return real_path(x0, x1, t)

    def ce(logits, target):
        seen["target"] = target
        return real_ce(logits, target)

    monkeypatch.setattr(losses, "linear_path", path)
    monkeypatch.setattr(losses.F, "cross_entropy", ce)
    flow = FlowConfig(coupling="ot", csp_fraction=0.0)  # every crystal de novo
    training_losses(model, batch, flow, 0.0, torch.Generator().manual_seed(1))
    # the interpolant's clean end and the cross-entropy target are the same permuted types
    assert torch.equal(seen["onehot"].argmax(-1), seen["target"])
    assert not torch.equal(seen["target"], stats.type_index(batch.atomic_numbers))


def test_ot_training_losses_are_finite_and_shorter_paths_give_a_smaller_velocity_target():
    batch = CrystalBatch.from_structures(list(canonical_crystals().values()))
    stats = stats_for(batch)
    torch.manual_seed(0)
    model = FlowModel(ModelConfig(hidden_dim=16, num_layers=1), stats)
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    ot = training_losses(model, batch, FlowConfig(coupling="ot"), 0.0, g())
    assert all(torch.isfinite(v) for v in ot.values())
    # Same draws, zero-velocity model: the frac loss is the mean squared target velocity,
    # which the OT pairing minimises over permutations and shifts.
    zero = FlowModel(ModelConfig(hidden_dim=16, num_layers=1), stats)
    for p in zero.frac_head.parameters():
        torch.nn.init.zeros_(p)
    plain = training_losses(zero, batch, FlowConfig(), 0.0, g())["frac"]
    short = training_losses(zero, batch, FlowConfig(coupling="ot"), 0.0, g())["frac"]
    assert short < 0.8 * plain
    try:
        training_losses(model, batch, FlowConfig(coupling="sinkhorn"), 0.0, g())
    except ValueError as e:
        assert "coupling" in str(e)
    else:
        raise AssertionError("unknown coupling accepted")
