"""The periodic encoder's symmetries, each proven on random crystals in float64."""

import pytest
import torch
import torch.nn.functional as F

from autoperi.nn.basis import FourierFeatures, RadialBasis, cosine_cutoff, wave_vectors
from autoperi.nn.embeddings import PropertyEmbedding
from autoperi.nn.encoder import PeriodicEncoder
from autoperi.testing import (
    permute,
    random_batch,
    random_rotation,
    rotate,
    shift_images,
    translate,
)

K = 6


def encoder(graph: str, lattice_aware: bool = True) -> PeriodicEncoder:
    torch.manual_seed(0)
    table = torch.randn(K, 4)
    return PeriodicEncoder(K, 32, 2, graph=graph, cutoff=5.0, max_neighbors=None,
                           lattice_aware=lattice_aware, element_table=table).double()


def run(model, batch, types=None):
    types = types if types is not None else F.one_hot(batch.atomic_numbers % K, K).double()
    return model(types, batch.frac_coords, batch.lattice, batch.num_atoms)


@pytest.fixture(params=["dense", "radius"])
def model(request):
    return encoder(request.param)


@pytest.fixture
def batch():
    return random_batch(num_crystals=5, max_atoms=6, seed=3)


def test_rotation_invariance_and_lattice_latent_equivariance(model, batch):
    rotation = random_rotation(7)
    a, b = run(model, batch), run(model, rotate(batch, rotation))
    assert torch.allclose(a.node, b.node, atol=1e-10)
    assert torch.allclose(a.crystal, b.crystal, atol=1e-10)
    # The d x 3 block turns with the crystal.
    assert torch.allclose(a.lattice_latent @ rotation.T, b.lattice_latent, atol=1e-10)


def test_periodic_translation_invariance(model, batch):
    shift = torch.rand(len(batch), 3, dtype=torch.float64)
    a, b = run(model, batch), run(model, translate(batch, shift))
    assert torch.allclose(a.node, b.node, atol=1e-10)


def test_integer_image_shift_invariance(model, batch):
    a, b = run(model, batch), run(model, shift_images(batch, seed=2))
    assert torch.allclose(a.crystal, b.crystal, atol=1e-10)


def test_permutation_equivariance(model, batch):
    types = F.one_hot(batch.atomic_numbers % K, K).double()
    moved, perm = permute(batch, seed=4)
    a, b = run(model, batch, types), run(model, moved, types[perm])
    assert torch.allclose(a.node[perm], b.node, atol=1e-10)
    assert torch.allclose(a.crystal, b.crystal, atol=1e-10)


def test_batched_equals_one_by_one(model, batch):
    whole = run(model, batch)
    singles = [run(model, part).crystal for part in batch.split()]
    assert torch.allclose(whole.crystal, torch.cat(singles), atol=1e-10)


def test_encoder_sees_geometry(batch):
    # Not invariant to what it must see: moving one atom changes the output.
    model = encoder("dense")
    moved = batch.replace(frac_coords=batch.frac_coords.index_add(
        0, torch.tensor([0]), torch.tensor([[0.1, 0.0, 0.0]], dtype=torch.float64)))
    assert not torch.allclose(run(model, batch).crystal, run(model, moved).crystal)


def test_lattice_switch_is_what_lets_a_dense_graph_see_the_cell():
    # One atom per cell: the dense graph has only the self-pair (offset 0, distance 0), so
    # without lattice features two different cells look the same; with them they do not.
    from autoperi.data.crystal import CrystalBatch

    one_atom = CrystalBatch(
        atomic_numbers=torch.tensor([1, 1]), frac_coords=torch.zeros(2, 3, dtype=torch.float64),
        lattice=torch.stack([3.0 * torch.eye(3), torch.diag(torch.tensor([3.0, 4.0, 6.0]))]
                            ).double(),
        num_atoms=torch.tensor([1, 1]))
    blind = run(encoder("dense", lattice_aware=False), one_atom).crystal
    aware = run(encoder("dense", lattice_aware=True), one_atom).crystal
    assert torch.allclose(blind[0], blind[1])
    assert not torch.allclose(aware[0], aware[1])


def test_lattice_latent_rows_stay_above_floor(batch):
    model = encoder("dense")
    with torch.no_grad():
        model.lattice_coeffs.weight.zero_()
        model.lattice_coeffs.bias.zero_()  # would collapse every row to zero
    latent = run(model, batch).lattice_latent
    scale = batch.lattice.norm(dim=-1).mean(-1)[:, None]
    assert torch.all(latent.norm(dim=-1) >= 0.5 * scale - 1e-9)


def test_fourier_features_are_periodic_and_distinguish_offsets():
    features = FourierFeatures(4)
    delta = torch.rand(10, 3, dtype=torch.float64)
    shifted = delta + torch.randint(-3, 4, (10, 3)).double()
    assert torch.allclose(features(delta), features(shifted), atol=1e-9)
    assert not torch.allclose(features(delta), features(delta + 0.1))
    assert features(delta).shape == (10, features.dim)
    k = wave_vectors(4)
    assert len(k) == 3 * 4 + 10 and len({tuple(v.tolist()) for v in k}) == len(k)


def test_radial_basis_vanishes_smoothly_at_cutoff():
    rbf = RadialBasis(16, 5.0)
    d = torch.tensor([0.0, 2.5, 4.999, 5.0, 7.0])
    values = rbf(d)
    assert torch.all(values[3:] == 0) and values[2].abs().max() < 1e-5
    assert cosine_cutoff(torch.tensor([0.0]), 5.0).item() == 1.0


def test_property_embedding_uses_null_token_when_masked():
    emb = PropertyEmbedding(2, 8)
    values = torch.tensor([[1.0, 2.0], [1.0, float("nan")]])
    mask = torch.tensor([[True, True], [True, False]])
    out = emb(values, mask)
    hidden = emb(values, torch.zeros_like(mask))
    assert not torch.allclose(out[0], out[1])
    assert torch.allclose(hidden[0], hidden[1])  # all hidden: values do not matter
    assert torch.isfinite(out).all()
