"""Flow components against exact answers: paths, priors, losses and the sampler with a known
velocity field (no training)."""

import math

import pytest
import torch
from torch import nn

from autoperi.config import FlowConfig, ModelConfig
from autoperi.data.crystal import CrystalBatch
from autoperi.data.features import PropertyScaler
from autoperi.flow.losses import masked_mae, periodic_chamfer, training_losses
from autoperi.flow.model import DataStats, FlowModel, FlowOutput
from autoperi.flow.paths import (
    carried_types,
    lattice_to_y,
    linear_path,
    masked_type_path,
    remove_mean,
    reveal_probability,
    torus_path,
    y_to_lattice,
)
from autoperi.flow.priors import AtomCountPrior, LatticePrior
from autoperi.flow.sampler import Request, _hidden, decode_types, sample_flow
from autoperi.geometry.clash import ClashFloor
from autoperi.geometry.lattice import lattice_to_params
from autoperi.geometry.torus import shortest_displacement
from autoperi.testing import canonical_crystals, random_batch


def stats_for(batch: CrystalBatch, conditions=(), heads=()) -> DataStats:
    return DataStats(
        vocab=tuple(sorted(set(batch.atomic_numbers.tolist()))), conditions=tuple(conditions),
        heads=tuple(heads), energy_property="",
        scaler=PropertyScaler.fit({h: batch.properties[h] for h in heads}) if heads
        else PropertyScaler((), (), ()),
        lattice_prior=LatticePrior.fit(batch.lattice, batch.atomic_numbers, batch.num_atoms),
        atom_count_prior=AtomCountPrior.fit(batch.num_atoms),
    )


def test_torus_path_ends_and_takes_the_short_way():
    x0 = torch.tensor([[0.9, 0.1, 0.5]])
    x1 = torch.tensor([[0.1, 0.9, 0.5]])
    xt, v = torus_path(x0, x1, torch.tensor([0.5]))
    assert torch.allclose(v, torch.tensor([[0.2, -0.2, 0.0]]), atol=1e-6)  # across the border
    assert torch.allclose(xt, torch.tensor([[0.0, 0.0, 0.5]]), atol=1e-6)
    end, _ = torus_path(x0, x1, torch.tensor([1.0]))
    assert torch.allclose(shortest_displacement(end - x1), torch.zeros(1, 3), atol=1e-6)


def test_linear_path_and_mean_removal():
    a, b = torch.zeros(2, 3), torch.ones(2, 3)
    xt, v = linear_path(a, b, torch.tensor([0.25, 1.0]))
    assert torch.allclose(xt[0], torch.full((3,), 0.25)) and torch.equal(xt[1], b[1])
    v = torch.tensor([[1.0, 0, 0], [3.0, 0, 0], [5.0, 1, 1]])
    out = remove_mean(v, torch.tensor([0, 0, 1]), 2)
    assert torch.allclose(out, torch.tensor([[-1.0, 0, 0], [1.0, 0, 0], [0.0, 0, 0]]))


def test_lattice_parametrisation_round_trip_is_rotation_invariant():
    batch = random_batch(6, seed=1)
    y = lattice_to_y(batch.lattice)
    back = y_to_lattice(y)
    for original, rebuilt in zip(lattice_to_params(batch.lattice), lattice_to_params(back)):
        assert torch.allclose(original, rebuilt, atol=1e-6)
    q, _ = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64))
    assert torch.allclose(lattice_to_y(batch.lattice @ q), y, atol=1e-9)


def test_y_to_lattice_never_collapses():
    impossible = torch.tensor([[1.0, 1.0, 1.0, 0.4, 0.4, 2.9]])  # alpha + beta < gamma
    lattice = y_to_lattice(impossible)
    assert torch.linalg.det(lattice).abs() > 0.1 * math.e**3 * 0.05


def test_lattice_prior_recovers_the_volume_of_known_crystals():
    crystals = list(canonical_crystals().values())
    batch = CrystalBatch.from_structures(crystals, dtype=torch.float64)
    prior = LatticePrior.fit(batch.lattice, batch.atomic_numbers, batch.num_atoms)
    mean = prior.mean(batch.num_atoms, batch.atomic_numbers)
    # Composition-aware mean volume (from the length mean) within a factor 2 of the truth.
    predicted = torch.exp(mean[:, :3].sum(-1).double())
    true = torch.linalg.det(batch.lattice).abs()
    assert torch.all((predicted / true).log().abs() < math.log(2.0))
    y0 = prior.sample(batch.num_atoms, None, torch.Generator().manual_seed(0))
    assert y0.shape == (len(crystals), 6) and torch.isfinite(y0).all()
    assert LatticePrior.from_dict(prior.to_dict()) == prior


def test_atom_count_prior_samples_only_seen_counts():
    prior = AtomCountPrior.fit(torch.tensor([4, 4, 6]))
    draws = prior.sample(1000, torch.Generator().manual_seed(0))
    assert set(draws.tolist()) == {4, 6}
    assert abs((draws == 4).float().mean() - 2 / 3) < 0.05


def test_periodic_chamfer_exact_values():
    lattice = (4.0 * torch.eye(3))[None]
    x = torch.tensor([[0.0, 0.0, 0.0], [0.5, 0.5, 0.5]])
    n = torch.tensor([2])
    assert periodic_chamfer(x, x, lattice, n) == 0
    # A permutation and a wrap across the border do not count.
    moved = torch.tensor([[0.5, 0.5, 0.5], [0.999, 0.0, 0.0]])
    assert periodic_chamfer(moved, x, lattice, n) < 0.005
    # Shifting one atom by 0.1 (0.4 Å): each direction sees 0.4 Å for that atom.
    off = torch.tensor([[0.1, 0.0, 0.0], [0.5, 0.5, 0.5]])
    assert periodic_chamfer(off, x, lattice, n) == pytest.approx(0.2, abs=1e-5)


def test_masked_mae():
    pred, target = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.0, float("nan"), 5.0])
    assert masked_mae(pred, target, ~target.isnan()) == pytest.approx(1.5)
    assert masked_mae(pred, target, torch.zeros(3, dtype=torch.bool)) == 0


class ExactField(nn.Module):
    """The exact conditional velocity towards one known crystal (per batch position)."""

    def __init__(self, target: CrystalBatch, stats: DataStats, type_path: str = "gaussian"):
        super().__init__()
        self.target, self.stats = target, stats
        self.config = ModelConfig(type_path=type_path)
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, type_state, frac, y, num_atoms, t, t_types, values=None, mask=None):
        tt = t[:, None]
        crystal_idx = self.target.crystal_idx
        v_frac = shortest_displacement(self.target.frac_coords - frac) / (1 - tt[crystal_idx])
        v_frac = remove_mean(v_frac, crystal_idx, len(num_atoms))
        v_lat = (lattice_to_y(self.target.lattice) - y) / (1 - tt)
        index = self.stats.type_index(self.target.atomic_numbers)
        logits = 50.0 * torch.nn.functional.one_hot(index, len(self.stats.vocab)).float()
        return FlowOutput(v_frac, v_lat, logits, torch.zeros(len(num_atoms), 0))


@pytest.mark.parametrize("method,steps,jump", [("euler", 1, 1.0), ("euler", 7, 1.0),
                                               ("heun", 5, 1.0), ("heun", 3, 0.5)])
def test_sampler_reaches_the_target_of_an_exact_field(method, steps, jump):
    crystals = canonical_crystals()
    target = CrystalBatch.from_structures([crystals["perovskite_SrTiO3"], crystals["hcp_Mg"]])
    stats = stats_for(target)
    field = ExactField(target, stats)
    out, path = sample_flow(field, Request(target.num_atoms), steps, method,
                            generator=torch.Generator().manual_seed(0), trajectory=True,
                            jump_at=jump)
    assert len(path) == steps + (jump < 1)  # the jump is one more (Euler) step
    assert torch.equal(out.atomic_numbers, target.atomic_numbers)
    for a, b in zip(lattice_to_params(out.lattice), lattice_to_params(target.lattice)):
        assert torch.allclose(a, b, atol=1e-4)
    # Positions agree up to one common translation per crystal (the gauge).
    diff = shortest_displacement(out.frac_coords - target.frac_coords)
    diff = diff - remove_mean(diff, target.crystal_idx, 2)
    spread = shortest_displacement(out.frac_coords - target.frac_coords - diff)
    assert spread.abs().max() < 1e-4


def test_clash_pushes_keep_real_crystals_and_separate_a_collapsing_pair():
    crystals = canonical_crystals()
    real = CrystalBatch.from_structures([crystals["perovskite_SrTiO3"], crystals["hcp_Mg"]])
    field = ExactField(real, stats_for(real))
    plain, _ = sample_flow(field, Request(real.num_atoms), 10, "heun",
                           generator=torch.Generator().manual_seed(0))
    pushed, _ = sample_flow(field, Request(real.num_atoms), 10, "heun",
                            generator=torch.Generator().manual_seed(0),
                            clash=ClashFloor(1.0, after=0.3))
    assert torch.allclose(plain.frac_coords, pushed.frac_coords, atol=1e-5)  # nothing < 1 Å
    # a field that sends two O atoms of SrTiO3 to points 0.1 Å apart
    collapsed = real.select([0])
    frac = collapsed.frac_coords.clone()
    frac[3] = frac[2] + torch.tensor([0.1 / 3.905, 0.0, 0.0], dtype=frac.dtype)
    collapsed = collapsed.replace(frac_coords=frac)
    field = ExactField(collapsed, stats_for(collapsed))

    def o_o_distance(clash: ClashFloor) -> float:
        out, _ = sample_flow(field, Request(collapsed.num_atoms), 10, "euler",
                             generator=torch.Generator().manual_seed(1), clash=clash)
        return out.to_structures()[0].get_distance(2, 3)

    assert o_o_distance(ClashFloor()) == pytest.approx(0.1, abs=1e-3)
    assert o_o_distance(ClashFloor(1.0)) == pytest.approx(1.0, abs=1e-3)
    # relative floor: O-O at scale x twice O's covalent radius (0.66 Å), the larger floor acts
    assert o_o_distance(ClashFloor(scale=0.8)) == pytest.approx(0.8 * 1.32, abs=1e-3)
    assert o_o_distance(ClashFloor(1.2, scale=0.8)) == pytest.approx(1.2, abs=1e-3)
    with pytest.raises(ValueError, match="clash"):
        ClashFloor(-1.0)


@pytest.mark.parametrize("method,jump,noise", [("euler", 1.0, 0.0), ("heun", 0.6, 0.0),
                                               ("heun", 1.0, 0.3)])
def test_masked_types_reach_the_target_of_an_exact_field(method, jump, noise):
    crystals = canonical_crystals()
    target = CrystalBatch.from_structures([crystals["perovskite_SrTiO3"],
                                           crystals["rocksalt_NaCl"]])
    stats = stats_for(target)
    field = ExactField(target, stats, "masked")
    field.config = ModelConfig(type_path="masked", hidden_noise=noise)
    out, path = sample_flow(field, Request(target.num_atoms), 6, method,
                            generator=torch.Generator().manual_seed(0), trajectory=True,
                            jump_at=jump)
    assert torch.equal(out.atomic_numbers, target.atomic_numbers)  # every atom revealed
    assert all(torch.equal(p.atomic_numbers, target.atomic_numbers) for p in path)


class FollowTheFirst(nn.Module):
    """Hidden atoms: the element of the crystal's revealed atoms if any, else either of two
    elements with equal odds. Only a sampler that reveals atoms one after another and
    conditions on the revealed ones makes every crystal a single element."""

    def __init__(self, stats: DataStats):
        super().__init__()
        self.stats, self.config = stats, ModelConfig(type_path="masked")
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, type_state, frac, y, num_atoms, t, t_types, values=None, mask=None):
        b, k = len(num_atoms), type_state.shape[1]
        crystal_idx = torch.repeat_interleave(torch.arange(b), num_atoms)
        seen = torch.zeros(b, k).index_add(0, crystal_idx, type_state)[crystal_idx]  # [N, K]
        logits = torch.where(seen.sum(-1, keepdim=True) > 0, 50.0 * (seen > 0).float(),
                             torch.zeros_like(seen))
        logits[:, 2:] = -50.0  # only the first two vocabulary elements
        return FlowOutput(torch.zeros_like(frac), torch.zeros_like(y), logits,
                          torch.zeros(b, 0))


def test_masked_sampling_draws_later_atoms_given_the_earlier_ones():
    target = CrystalBatch.from_structures([canonical_crystals()["perovskite_SrTiO3"]] * 40)
    stats = stats_for(target)

    def single_element_share(steps):
        out, _ = sample_flow(FollowTheFirst(stats), Request(target.num_atoms), steps, "euler",
                             generator=torch.Generator().manual_seed(0))
        per_crystal = out.atomic_numbers.view(40, 5)
        assert set(per_crystal[:, 0].tolist()) == set(stats.vocab[:2])  # drawn, not argmax
        return float((per_crystal == per_crystal[:, :1]).all(1).float().mean())

    # Atoms revealed in the same step are drawn independently: one step makes 2 of 32
    # equally likely crystals single-element; with fine steps later atoms follow the first.
    assert single_element_share(1) < 0.3
    assert single_element_share(400) > 0.9


class ChangeOfMind(nn.Module):
    """Masked types: before t = 0.5 the second vocabulary element, from then on the first,
    each with certainty (logit 30)."""

    def __init__(self, stats: DataStats):
        super().__init__()
        self.stats, self.config = stats, ModelConfig(type_path="masked")
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, type_state, frac, y, num_atoms, t, t_types, values=None, mask=None):
        crystal_idx = torch.repeat_interleave(torch.arange(len(num_atoms)), num_atoms)
        late = t[crystal_idx] >= 0.5
        logits = torch.zeros_like(type_state)
        logits[:, 0] = torch.where(late, 30.0, 0.0)
        logits[:, 1] = torch.where(late, 0.0, 30.0)
        return FlowOutput(torch.zeros_like(frac), torch.zeros_like(y), logits,
                          torch.zeros(len(num_atoms), 0))


def test_committing_masked_types_keeps_the_revealed_atoms():
    target = CrystalBatch.from_structures([canonical_crystals()["perovskite_SrTiO3"]] * 20)
    stats = stats_for(target)
    first, second = stats.vocab[:2]
    out, _ = sample_flow(ChangeOfMind(stats), Request(target.num_atoms), 10, "euler",
                         generator=torch.Generator().manual_seed(0), commit_at=0.5)
    numbers = out.atomic_numbers.tolist()
    # atoms revealed before t = 0.5 (about half) stay the second element; the rest, decided
    # at the commit, are the first
    assert set(numbers) == {first, second}
    assert 0.3 < numbers.count(second) / len(numbers) < 0.7


class RecordingField(ExactField):
    """The exact field, recording the type input and type time of every evaluation."""

    def __init__(self, target, stats, type_path):
        super().__init__(target, stats, type_path)
        self.seen = []

    def forward(self, type_state, frac, y, num_atoms, t, t_types, values=None, mask=None):
        self.seen.append((type_state.clone(), t_types.clone()))
        return super().forward(type_state, frac, y, num_atoms, t, t_types, values, mask)


def test_carried_types_lie_on_the_gaussian_path():
    g = torch.Generator().manual_seed(0)
    onehot = torch.nn.functional.one_hot(torch.arange(6) % 3, 3).float()
    noise = torch.randn(6, 3, generator=g)
    t = torch.tensor([0.0, 0.2, 0.5, 0.7, 0.9, 1.0])
    state, revealed = masked_type_path(onehot, t, g)
    carried = carried_types(state, noise, t)
    on_path, _ = linear_path(noise, onehot, t)
    assert torch.allclose(carried[revealed], on_path[revealed])  # revealed: the gaussian path
    hidden = ~revealed
    assert torch.allclose(carried[hidden], (1 - t[hidden, None]) * noise[hidden])
    assert torch.equal(carried[-1], onehot[-1])  # t = 1: the type itself
    assert torch.equal(carried[0], noise[0])  # t = 0: the noise itself


def test_masked_gaussian_sampling_carries_one_fixed_noise_per_atom():
    crystals = canonical_crystals()
    target = CrystalBatch.from_structures([crystals["perovskite_SrTiO3"],
                                           crystals["rocksalt_NaCl"]])
    stats = stats_for(target)
    field = RecordingField(target, stats, "masked_gaussian")
    out, _ = sample_flow(field, Request(target.num_atoms), 6, "heun",
                         generator=torch.Generator().manual_seed(0))
    assert torch.equal(out.atomic_numbers, target.atomic_numbers)  # every atom revealed
    onehot = torch.nn.functional.one_hot(stats.type_index(target.atomic_numbers),
                                         len(stats.vocab)).float()
    first, t0 = field.seen[0]
    assert bool((t0 == 0).all())
    noise = first  # at t = 0 the input is the noise itself
    # the three O atoms of SrTiO3 see different inputs: the noise tells them apart
    oxygen = (target.atomic_numbers == 8).nonzero().squeeze(-1)
    assert torch.cdist(first[oxygen], first[oxygen]).triu(1).max() > 0.5
    for state, t_types in field.seen[1:]:
        t = t_types[target.crystal_idx][:, None]
        hidden_like = (1 - t) * noise
        revealed_like = t * onehot + (1 - t) * noise
        each = torch.isclose(state, hidden_like, atol=1e-5).all(-1) | \
            torch.isclose(state, revealed_like, atol=1e-5).all(-1)
        assert bool(each.all())  # hidden or revealed, always with the same noise
    # CSP sees the exact types, with no noise
    field.seen.clear()
    sample_flow(field, Request(target.num_atoms, target.atomic_numbers), 2, "euler",
                generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(state, onehot) for state, _ in field.seen)


def test_masked_gaussian_type_loss_scores_hidden_atoms_only(monkeypatch):
    import autoperi.flow.losses as losses_module

    batch = CrystalBatch.from_structures(list(canonical_crystals().values()))
    stats = stats_for(batch)
    torch.manual_seed(0)
    model = FlowModel(ModelConfig(hidden_dim=16, num_layers=1, type_path="masked_gaussian"),
                      stats)
    seen = {}

    def recording_carrier(state, noise, t):
        seen["masked_state"], seen["noise"], seen["t"] = state, noise, t
        return carried_types(state, noise, t)

    def spy(module, args, output):
        seen["input"], seen["logits"] = args[0], output.type_logits
    monkeypatch.setattr(losses_module, "carried_types", recording_carrier)
    model.register_forward_hook(spy)
    only_types = FlowConfig(csp_fraction=0.0, lambda_frac=0, lambda_lattice=0, lambda_recon=0,
                            lambda_property=0)
    losses = training_losses(model, batch, only_types, 0.0, torch.Generator().manual_seed(2))
    t = seen["t"][:, None]
    assert torch.allclose(seen["input"], t * seen["masked_state"] + (1 - t) * seen["noise"])
    hidden = _hidden(seen["masked_state"])
    assert bool(hidden.any()) and bool((~hidden).any())
    assert 0.5 < float(seen["noise"].std()) < 1.5  # the gaussian path's unit noise
    targets = stats.type_index(batch.atomic_numbers)
    expected = torch.nn.functional.cross_entropy(seen["logits"][hidden], targets[hidden])
    assert torch.allclose(losses["types"], expected)


def test_masked_type_path_reveals_at_rate_t():
    onehot = torch.nn.functional.one_hot(torch.arange(20000) % 4, 4).float()
    g = torch.Generator().manual_seed(0)
    for t in (0.0, 0.3, 1.0):
        state, revealed = masked_type_path(onehot, torch.full((20000,), t), g)
        assert abs(revealed.float().mean() - t) < 0.01
        assert torch.equal(state[revealed], onehot[revealed])
        assert bool((state[~revealed] == 0).all())
    # with noise, hidden atoms show it (scale 0.2, never an exact one-hot); revealed ones not
    state, revealed = masked_type_path(onehot, torch.full((20000,), 0.3), g, noise=0.2)
    assert torch.equal(state[revealed], onehot[revealed])
    assert abs(float(state[~revealed].std()) - 0.2) < 0.005
    assert torch.equal(_hidden(state), ~revealed)
    # Sampling reveals with dt / (1 - t) per step: P(still hidden at t_k) = 1 - t_k exactly.
    grid = [k / 7 for k in range(8)]
    hidden = 1.0
    for a, b in zip(grid[:-1], grid[1:]):
        hidden *= 1.0 - reveal_probability(a, b - a)
        assert hidden == pytest.approx(1.0 - b, abs=1e-12)


def test_sampler_csp_keeps_types_and_respects_element_mask():
    crystals = canonical_crystals()
    target = CrystalBatch.from_structures([crystals["perovskite_SrTiO3"]])
    stats = stats_for(target)
    field = ExactField(target, stats)
    out, _ = sample_flow(field, Request(target.num_atoms, target.atomic_numbers), 3, "euler")
    assert torch.equal(out.atomic_numbers, target.atomic_numbers)
    # Forbid oxygen: the field wants O but the mask must win.
    allowed = torch.tensor([z != 8 for z in stats.vocab])
    out, _ = sample_flow(field, Request(target.num_atoms, allowed=allowed), 3, "euler")
    assert 8 not in out.atomic_numbers.tolist()


def test_decode_types_is_the_best_assignment_that_passes_the_check():
    import itertools

    gen = torch.Generator().manual_seed(3)
    log_probs = torch.log_softmax(torch.randn(7, 5, generator=gen) * 2, -1)
    num_atoms = torch.tensor([3, 4])
    vocab = torch.tensor([1, 8, 11, 17, 26])

    def check(numbers):  # an arbitrary rule: an even sum of atomic numbers
        return sum(numbers) % 2 == 0

    got = decode_types(log_probs, num_atoms, vocab, check, top=5, budget=10**4)
    assert torch.equal(decode_types(log_probs, num_atoms, vocab), log_probs.argmax(-1))
    start = 0
    for n in num_atoms.tolist():
        lp = log_probs[start:start + n]
        best = max((c for c in itertools.product(range(5), repeat=n)
                    if check(vocab[list(c)].tolist())),
                   key=lambda c: float(lp[range(n), list(c)].sum()))
        assert got[start:start + n].tolist() == list(best)  # brute force agrees
        start += n
    # nothing passes: every crystal keeps its most probable types
    never = decode_types(log_probs, num_atoms, vocab, lambda numbers: False, budget=50)
    assert torch.equal(never, log_probs.argmax(-1))


@pytest.mark.parametrize("type_path", ["gaussian", "masked", "masked_gaussian"])
def test_committed_types_honour_the_check_and_the_geometry_still_arrives(type_path):
    crystals = canonical_crystals()
    target = CrystalBatch.from_structures([crystals["perovskite_SrTiO3"]])
    stats = stats_for(target)  # vocab O, Ti, Sr; the field wants SrTiO3

    def no_titanium(numbers):
        return 22 not in numbers

    out, _ = sample_flow(ExactField(target, stats, type_path),
                         Request(target.num_atoms, composition_check=no_titanium), 6, "euler",
                         generator=torch.Generator().manual_seed(0), commit_at=0.5)
    assert 22 not in out.atomic_numbers.tolist()
    assert sorted(out.atomic_numbers.tolist()).count(8) >= 3  # the O sites stay O
    for a, b in zip(lattice_to_params(out.lattice), lattice_to_params(target.lattice)):
        assert torch.allclose(a, b, atol=1e-4)
    with pytest.raises(ValueError, match="commit_at"):
        sample_flow(ExactField(target, stats), Request(target.num_atoms), 2, commit_at=1.0)
    with pytest.raises(ValueError, match="jump_at"):
        sample_flow(ExactField(target, stats), Request(target.num_atoms), 2, jump_at=0.0)


def test_training_losses_are_finite_and_switchable():
    batch = CrystalBatch.from_structures(list(canonical_crystals().values()))
    batch = batch.replace(properties={"gap": torch.tensor([0.0, 0.0, 5.0, 5.5, 3.2, 0.0])})
    stats = stats_for(batch, conditions=("gap",), heads=("gap",))
    torch.manual_seed(0)
    model = FlowModel(ModelConfig(hidden_dim=16, num_layers=1), stats)
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    losses = training_losses(model, batch, FlowConfig(), 0.5, g())
    assert all(torch.isfinite(v) for v in losses.values())
    weighted = sum(getattr(FlowConfig(), f"lambda_{k}") * losses[k]
                   for k in ("frac", "lattice", "types", "recon", "property", "stability",
                             "symmetry", "offpath"))
    assert torch.allclose(losses["loss"], weighted)
    only_frac = FlowConfig(lambda_lattice=0, lambda_types=0, lambda_recon=0, lambda_property=0)
    assert torch.allclose(training_losses(model, batch, only_frac, 0.5, g())["loss"],
                          losses["frac"])
    # CSP-only training has no type loss; the same seed gives the same losses.
    csp = training_losses(model, batch, FlowConfig(generate_types=False), 0.5, g())
    assert csp["types"] == 0
    again = training_losses(model, batch, FlowConfig(), 0.5, g())
    assert torch.equal(again["loss"], losses["loss"])
    with pytest.raises(ValueError, match="type_path"):
        training_losses(FlowModel(ModelConfig(hidden_dim=16, num_layers=1, type_path="x"),
                                  stats), batch, FlowConfig(), 0.5, g())
    for bad in (ModelConfig(hidden_noise=0.1), ModelConfig(type_path="masked", hidden_noise=-1),
                ModelConfig(type_path="masked_gaussian", hidden_noise=0.1)):
        with pytest.raises(ValueError, match="hidden_noise"):
            FlowModel(bad, stats)


@pytest.mark.parametrize("noise", [0.0, 0.3])
def test_masked_type_loss_scores_hidden_atoms_only(noise):
    batch = CrystalBatch.from_structures(list(canonical_crystals().values()))
    stats = stats_for(batch)
    torch.manual_seed(0)
    model = FlowModel(ModelConfig(hidden_dim=16, num_layers=1, type_path="masked",
                                  hidden_noise=noise), stats)
    seen = {}

    def spy(module, args, output):
        seen["state"], seen["logits"] = args[0], output.type_logits
    model.register_forward_hook(spy)
    only_types = FlowConfig(csp_fraction=0.0, lambda_frac=0, lambda_lattice=0, lambda_recon=0,
                            lambda_property=0)
    losses = training_losses(model, batch, only_types, 0.0, torch.Generator().manual_seed(2))
    state = seen["state"]
    hidden = _hidden(state)
    assert bool(hidden.any()) and bool((~hidden).any())  # a mix at random times
    if noise == 0:
        assert bool((state[hidden] == 0).all())  # zeros
    else:  # the model sees the noise of hidden atoms
        assert 0.2 < float(state[hidden].std()) < 0.4
    targets = stats.type_index(batch.atomic_numbers)
    assert torch.equal(state[~hidden].argmax(-1), targets[~hidden])  # revealed = true types
    expected = torch.nn.functional.cross_entropy(seen["logits"][hidden], targets[hidden])
    assert torch.allclose(losses["types"], expected)  # revealed atoms are not scored
    assert torch.isfinite(losses["types"]) and losses["types"] > 0


def test_flow_model_symmetries():
    from autoperi.testing import permute, random_rotation

    batch = random_batch(3, seed=5, dtype=torch.float32)
    batch = batch.replace(atomic_numbers=(batch.atomic_numbers % 3) + 1)
    stats = stats_for(batch)
    torch.manual_seed(0)
    model = FlowModel(ModelConfig(hidden_dim=16, num_layers=2), stats).eval()
    k = len(stats.vocab)
    types = torch.nn.functional.one_hot(stats.type_index(batch.atomic_numbers), k).float()
    y, t = lattice_to_y(batch.lattice), torch.full((3,), 0.3)

    def run(b, ty):
        return model(ty, b.frac_coords, lattice_to_y(b.lattice), b.num_atoms, t, t)

    base = run(batch, types)
    assert torch.allclose(remove_mean(base.frac_velocity, batch.crystal_idx, 3),
                          base.frac_velocity, atol=1e-6)  # translation gauge removed
    rotated = batch.replace(lattice=batch.lattice @ random_rotation(2, torch.float32).T)
    assert torch.allclose(run(rotated, types).lattice_velocity, base.lattice_velocity,
                          atol=1e-4)
    moved, perm = permute(batch, seed=1)
    out = run(moved, types[perm])
    assert torch.allclose(out.frac_velocity, base.frac_velocity[perm], atol=1e-5)
    assert torch.allclose(out.type_logits, base.type_logits[perm], atol=1e-5)
    assert torch.allclose(y, lattice_to_y(rotated.lattice), atol=1e-4)


def test_stability_loss_moves_structures_not_the_energy_head():
    batch = CrystalBatch.from_structures(list(canonical_crystals().values()))
    batch = batch.replace(properties={"e": torch.tensor([0.0, -1.0, -3.0, -7.0, -8.0, -1.5])})
    stats = stats_for(batch, heads=("e",))
    stats = DataStats(stats.vocab, (), ("e",), "e", stats.scaler, stats.lattice_prior,
                      stats.atom_count_prior)
    torch.manual_seed(0)
    model = FlowModel(ModelConfig(hidden_dim=16, num_layers=1), stats)
    flow = FlowConfig(lambda_frac=0, lambda_lattice=0, lambda_types=0, lambda_recon=0,
                      lambda_property=0, lambda_stability=1.0)
    losses = training_losses(model, batch, flow, 0.0, torch.Generator().manual_seed(0))
    assert torch.allclose(losses["loss"], losses["stability"]) and losses["stability"] != 0
    losses["loss"].backward()
    head = model.property_head[-1].weight.grad
    assert head is None or torch.all(head == 0)  # the head is not trained by this loss
    frac_head = model.frac_head[-1].weight.grad
    assert frac_head is not None and frac_head.abs().sum() > 0  # the generator is
    no_energy = DataStats(stats.vocab, (), ("e",), "", stats.scaler, stats.lattice_prior,
                          stats.atom_count_prior)
    with pytest.raises(ValueError, match="energy_property"):
        training_losses(FlowModel(ModelConfig(hidden_dim=16, num_layers=1), no_energy),
                        batch, flow, 0.0, torch.Generator().manual_seed(0))


def test_symmetry_loss_is_zero_for_symmetric_and_positive_for_broken_crystals():
    import numpy as np

    from autoperi.data.clean import clean_with_symmetry
    from autoperi.flow.losses import symmetry_loss

    structure, ops = clean_with_symmetry(canonical_crystals()["perovskite_SrTiO3"])
    batch = CrystalBatch.from_structures([structure])
    ops_t, counts = torch.from_numpy(ops), torch.tensor([len(ops)])
    types = batch.atomic_numbers
    g = torch.Generator().manual_seed(0)
    for _ in range(5):  # every drawn operation maps the ideal crystal onto itself
        loss = symmetry_loss(batch.frac_coords, types, batch.lattice, batch.num_atoms,
                             ops_t, counts, g)
        assert loss < 1e-5
    broken = batch.frac_coords.clone()
    broken[1] += torch.tensor([0.05, 0.02, 0.0])  # Ti off centre breaks cubic symmetry
    losses = [float(symmetry_loss(broken, types, batch.lattice, batch.num_atoms, ops_t,
                                  counts, g)) for _ in range(10)]
    assert np.mean(losses) > 0.02
    # Type-aware: swapping the Sr and Ti positions keeps the set of positions (untyped
    # Chamfer 0) but puts each element where the other belongs (typed Chamfer > 0).
    x = batch.frac_coords
    swapped = x.clone()
    swapped[[0, 1]] = x[[1, 0]]
    assert periodic_chamfer(swapped, x, batch.lattice, batch.num_atoms) < 1e-6
    assert periodic_chamfer(swapped, x, batch.lattice, batch.num_atoms, types) > 1.0


def test_offpath_states_displace_late_crystals_by_sigma_angstrom():
    from autoperi.flow.losses import offpath_states

    batch = random_batch(num_crystals=400, max_atoms=6, seed=4, dtype=torch.float32)
    t = torch.linspace(0, 1, 400)
    moved, chosen = offpath_states(batch.frac_coords, batch.lattice, batch.crystal_idx, t,
                                   0.5, torch.Generator().manual_seed(0))
    assert not bool(chosen[t < 0.7].any())  # early states stay on their paths (default 0.7)
    assert 0.15 < float(chosen[t >= 0.7].float().mean()) < 0.35  # about a quarter
    _, chosen_half = offpath_states(batch.frac_coords, batch.lattice, batch.crystal_idx, t,
                                    0.5, torch.Generator().manual_seed(0), share=0.5, after=0.4)
    assert not bool(chosen_half[t < 0.4].any())
    assert 0.4 < float(chosen_half[t >= 0.4].float().mean()) < 0.6  # about half
    atoms = chosen[batch.crystal_idx]
    assert torch.equal(moved[~atoms], batch.frac_coords[~atoms])
    delta = shortest_displacement(moved[atoms] - batch.frac_coords[atoms])
    cart = torch.einsum("ni,nij->nj", delta, batch.lattice[batch.crystal_idx[atoms]])
    n = batch.num_atoms[batch.crystal_idx[atoms]].float()
    # sigma in Å whatever the cell, less the common translation (variance (n - 1) / n)
    assert abs(float((cart ** 2 * n[:, None] / (n[:, None] - 1).clamp_min(1)).mean()) ** 0.5
               - 0.5) < 0.05
    # no common translation (small sigma, so that no displacement wraps around the cell)
    small, _ = offpath_states(batch.frac_coords, batch.lattice, batch.crystal_idx, t, 0.05,
                              torch.Generator().manual_seed(0))
    step = shortest_displacement(small - batch.frac_coords)
    mean = torch.zeros(len(batch.num_atoms), 3).index_add(0, batch.crystal_idx, step)
    assert torch.allclose(mean, torch.zeros_like(mean), atol=1e-5)
    assert float(step.abs().max()) > 1e-3  # (and it did move)


def test_collision_moves_carry_one_atom_most_of_the_way_to_another():
    from autoperi.flow.losses import collision_moves, offpath_states

    batch = random_batch(num_crystals=200, max_atoms=6, seed=5, dtype=torch.float32)
    x, idx, counts = batch.frac_coords, batch.crystal_idx, batch.num_atoms
    chosen = torch.arange(200) % 2 == 0
    moves = collision_moves(x, idx, chosen, torch.Generator().manual_seed(1))
    moved_atoms = (moves != 0).any(1)
    per_crystal = torch.zeros(200, dtype=torch.long).index_add(0, idx, moved_atoms.long())
    assert torch.equal(per_crystal, (chosen & (counts > 1)).long())  # one atom, chosen only
    for i in torch.nonzero(moved_atoms).flatten().tolist():
        others = torch.nonzero((idx == idx[i]) & (torch.arange(len(x)) != i)).flatten()
        d = shortest_displacement(x[others] - x[i])
        before, after = d.norm(dim=1), shortest_displacement(d - moves[i]).norm(dim=1)
        # a partner j: the move is 60-100 % of the way to it, so its distance is 0-40 % of
        # what it was
        share = (d @ moves[i]) / (d * d).sum(1)
        parallel = (moves[i] - share[:, None] * d).norm(dim=1) < 1e-5
        partner = parallel & (share >= 0.6 - 1e-5) & (share <= 1 + 1e-5)
        assert bool(partner.any())
        assert bool((after[partner] <= 0.4 * before[partner] + 1e-5).all())
    # inside offpath_states (sigma 0): with pairs=1 every displaced crystal of two atoms or
    # more gets a collision, with pairs=0 the states are the unmoved ones
    t = torch.ones(200)
    same, chosen0 = offpath_states(x, batch.lattice, idx, t, 0.0,
                                   torch.Generator().manual_seed(0), share=1.0)
    assert bool(chosen0.all())
    assert torch.allclose(shortest_displacement(same - x), torch.zeros_like(x), atol=1e-6)
    paired, _ = offpath_states(x, batch.lattice, idx, t, 0.0, torch.Generator().manual_seed(0),
                               share=1.0, pairs=1.0)
    step = shortest_displacement(paired - x)
    mean = torch.zeros(200, 3).index_add(0, idx, step)
    assert torch.allclose(mean, torch.zeros_like(mean), atol=1e-5)  # the gauge stays fixed
    moved = torch.zeros(200).index_add(0, idx, step.norm(dim=1))
    assert bool((moved[counts > 1] > 1e-4).all()) and bool((moved[counts == 1] < 1e-6).all())
    with pytest.raises(ValueError, match="offpath_pairs"):
        offpath_states(x, batch.lattice, idx, t, 0.5, torch.Generator(), pairs=1.5)


def _offpath_setup():
    """Eight copies of the canonical crystals, a tiny model, a fresh generator per call."""
    batch = CrystalBatch.from_structures(list(canonical_crystals().values()) * 8)
    stats = stats_for(batch)
    torch.manual_seed(0)
    model = FlowModel(ModelConfig(hidden_dim=16, num_layers=1), stats)
    return batch, stats, model, lambda: torch.Generator().manual_seed(3)


def test_offpath_loss_replaces_the_velocity_loss_of_strayed_crystals():
    batch, stats, model, g = _offpath_setup()
    plain = training_losses(model, batch, FlowConfig(), 0.0, g())
    strayed = training_losses(model, batch, FlowConfig(lambda_offpath=1.0), 0.0, g())
    assert plain["offpath"] == 0 and strayed["offpath"] > 0
    assert torch.isfinite(strayed["loss"])
    # the strayed crystals leave the velocity loss: a zero-velocity model's frac loss is the
    # mean squared (mean-removed) target over the other atoms only
    zero = FlowModel(ModelConfig(hidden_dim=16, num_layers=1), stats)
    for p in zero.frac_head.parameters():
        torch.nn.init.zeros_(p)
    everyone = training_losses(zero, batch, FlowConfig(), 0.0, g())["frac"]
    some = training_losses(zero, batch, FlowConfig(lambda_offpath=1.0), 0.0, g())["frac"]
    assert not torch.isclose(everyone, some)


def test_offpath_share_and_start_time_reach_the_training_losses():
    batch, _, model, g = _offpath_setup()
    # no time is late enough: nobody strays
    never = training_losses(model, batch, FlowConfig(lambda_offpath=1.0, offpath_after=1.01),
                            0.0, g())
    assert never["offpath"] == 0
    # every crystal strays: no atom is left for the velocity loss
    always = training_losses(model, batch, FlowConfig(lambda_offpath=1.0, offpath_share=1.0,
                                                      offpath_after=0.0), 0.0, g())
    assert always["frac"] == 0 and always["offpath"] > 0
    assert (FlowConfig().offpath_share, FlowConfig().offpath_after) == (0.25, 0.7)
    with pytest.raises(ValueError, match="offpath_share"):
        training_losses(model, batch, FlowConfig(lambda_offpath=1.0, offpath_share=1.5), 0.0, g())
