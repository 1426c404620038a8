"""lattice.py and torus.py against exact oracles (numpy, hand-computed values)."""

import math

import numpy as np
import pytest
import torch

from autoperi.geometry.lattice import (
    cart_to_frac,
    frac_to_cart,
    heights,
    lattice_to_params,
    params_to_lattice,
    reduce_lattice,
    volume,
)
from autoperi.geometry.torus import shortest_displacement, wrap
from autoperi.testing import random_rotation

F64 = torch.float64


def _lattices(seed: int = 0, count: int = 8) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    lat = 4.0 * torch.eye(3, dtype=F64) + 1.5 * torch.randn(count, 3, 3, generator=g, dtype=F64)
    return torch.where(torch.linalg.det(lat)[:, None, None] < 0, -lat, lat)


def _orthogonality_defect(lattice: torch.Tensor) -> torch.Tensor:
    """prod |a_k| / |V| >= 1, with equality for an orthogonal basis."""
    return torch.linalg.norm(lattice, dim=-1).prod(-1) / volume(lattice).abs()


# ---------------------------------------------------------------------- frac <-> cart
def test_frac_to_cart_is_frac_times_lattice_per_crystal():
    lat = _lattices()
    g = torch.Generator().manual_seed(1)
    crystal_idx = torch.randint(0, len(lat), (50,), generator=g)
    frac = torch.rand(50, 3, generator=g, dtype=F64) * 3 - 1
    cart = frac_to_cart(frac, lat, crystal_idx)
    expected = np.stack([frac[n].numpy() @ lat[crystal_idx[n]].numpy() for n in range(50)])
    np.testing.assert_allclose(cart.numpy(), expected, rtol=0, atol=1e-12)


def test_cart_to_frac_inverts_frac_to_cart():
    lat = _lattices()
    g = torch.Generator().manual_seed(2)
    crystal_idx = torch.randint(0, len(lat), (50,), generator=g)
    frac = torch.rand(50, 3, generator=g, dtype=F64) * 3 - 1
    cart = frac_to_cart(frac, lat, crystal_idx)
    torch.testing.assert_close(cart_to_frac(cart, lat, crystal_idx), frac, rtol=0, atol=1e-12)
    cart2 = torch.randn(50, 3, generator=g, dtype=F64) * 5
    back = frac_to_cart(cart_to_frac(cart2, lat, crystal_idx), lat, crystal_idx)
    torch.testing.assert_close(back, cart2, rtol=0, atol=1e-11)


# ---------------------------------------------------------------------- volume, heights
def test_volume_value_and_sign():
    lat = _lattices()
    expected = np.array([np.dot(m[0], np.cross(m[1], m[2])) for m in lat.numpy()])
    np.testing.assert_allclose(volume(lat).numpy(), expected, rtol=1e-12)
    assert (volume(lat) > 0).all()
    left_handed = lat[:, [1, 0, 2]]  # swapping two basis vectors flips the handedness
    torch.testing.assert_close(volume(left_handed), -volume(lat))
    cubic = torch.diag(torch.tensor([2.0, 3.0, 5.0], dtype=F64))[None]
    assert volume(cubic).item() == pytest.approx(30.0, abs=1e-12)


def test_heights_of_orthogonal_cells_are_the_lengths():
    cells = torch.stack(
        [torch.diag(torch.tensor(v, dtype=F64)) for v in ([3.61] * 3, [2.0, 3.0, 7.5])]
    )
    torch.testing.assert_close(heights(cells), torch.linalg.norm(cells, dim=-1))


def test_heights_of_a_sheared_cell():
    # a, b in the xy plane: the height along c is c_z; the others are V / |b x c|, V / |c x a|.
    lat = torch.tensor([[[4.0, 0.0, 0.0], [2.0, 3.0, 0.0], [1.0, 1.0, 5.0]]], dtype=F64)
    v = 60.0
    expected = [v / math.sqrt(15**2 + 10**2 + 1**2), v / np.linalg.norm(np.cross(
        [1.0, 1.0, 5.0], [4.0, 0.0, 0.0])), 5.0]
    np.testing.assert_allclose(heights(lat)[0].numpy(), expected, rtol=1e-12)
    # Any lattice: h_k = 1 / |k-th reciprocal vector| (rows of inv(L).T).
    lat = _lattices(3)
    recip = torch.linalg.inv(lat).transpose(1, 2)
    torch.testing.assert_close(heights(lat), 1.0 / torch.linalg.norm(recip, dim=-1))


# ---------------------------------------------------------------------- parameters
def test_params_round_trip_and_known_cell():
    lengths = torch.tensor([[3.0, 3.0, 5.0], [2.5, 4.0, 6.0], [5.0, 5.0, 5.0]], dtype=F64)
    angles = torch.deg2rad(torch.tensor(
        [[90.0, 90.0, 120.0], [70.0, 100.0, 80.0], [15.0, 15.0, 15.0]], dtype=F64))
    lat = params_to_lattice(lengths, angles)
    hexagonal = torch.tensor([[3.0, 0, 0], [-1.5, 1.5 * math.sqrt(3), 0], [0, 0, 5.0]], dtype=F64)
    torch.testing.assert_close(lat[0], hexagonal, rtol=0, atol=1e-12)
    got_lengths, got_angles = lattice_to_params(lat)
    torch.testing.assert_close(got_lengths, lengths)
    torch.testing.assert_close(got_angles, angles)
    assert (volume(lat) > 0).all()


def test_lattice_to_params_to_lattice_keeps_the_metric_and_is_rotation_invariant():
    lat = _lattices(4)
    lengths, angles = lattice_to_params(lat)
    rebuilt = params_to_lattice(lengths, angles)
    # Same cell up to a rotation: the metric tensor L L^T and the volume are unchanged.
    torch.testing.assert_close(rebuilt @ rebuilt.transpose(1, 2), lat @ lat.transpose(1, 2))
    torch.testing.assert_close(volume(rebuilt), volume(lat))
    rotated = lat @ random_rotation(7)
    r_lengths, r_angles = lattice_to_params(rotated)
    torch.testing.assert_close(r_lengths, lengths)
    torch.testing.assert_close(r_angles, angles)


# ---------------------------------------------------------------------- reduction
def _unimodular(seed: int, steps: int = 6) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    u = torch.eye(3, dtype=F64)
    for _ in range(steps):
        i, j = torch.randperm(3, generator=g)[:2].tolist()
        e = torch.eye(3, dtype=F64)
        e[i, j] = float(torch.randint(-3, 4, (1,), generator=g))
        u = e @ u
    return u


def test_reduce_lattice_spans_the_same_lattice():
    base = _lattices(5)
    skewed = torch.stack([_unimodular(k) @ base[k] for k in range(len(base))])
    reduced, transform = reduce_lattice(skewed)
    assert torch.equal(transform, torch.round(transform))  # integer
    torch.testing.assert_close(torch.linalg.det(transform).abs(), torch.ones(len(base), dtype=F64))
    torch.testing.assert_close(reduced, transform @ skewed)
    inverse = torch.linalg.inv(transform)
    torch.testing.assert_close(inverse, torch.round(inverse))  # and back: same lattice
    torch.testing.assert_close(volume(reduced).abs(), volume(skewed).abs())


def test_reduce_lattice_undoes_a_strong_shear():
    cubic = torch.diag(torch.tensor([3.0, 4.0, 5.0], dtype=F64))
    shears = torch.tensor(
        [[[1, 0, 0], [3, 1, 0], [0, 0, 1]], [[1, 4, 0], [0, 1, 0], [-5, 3, 1]]], dtype=F64
    )
    skewed = shears @ cubic  # angles down to ~10 degrees
    _, angles = lattice_to_params(skewed)
    assert torch.rad2deg(angles).min() < 20
    reduced, transform = reduce_lattice(skewed)
    assert (_orthogonality_defect(skewed) > 2).all()
    # Back to the rectangular cell: orthogonal, with the lengths 3, 4, 5.
    torch.testing.assert_close(_orthogonality_defect(reduced), torch.ones(2, dtype=F64))
    lengths = torch.linalg.norm(reduced, dim=-1).sort(dim=-1).values
    torch.testing.assert_close(lengths, torch.tensor([[3.0, 4.0, 5.0]] * 2, dtype=F64))
    # Random shears of a generic cell: never worse than the cell before shearing (+10%).
    base = _lattices(6)
    skewed = torch.stack([_unimodular(10 + k, steps=10) @ base[k] for k in range(len(base))])
    reduced, _ = reduce_lattice(skewed)
    assert (_orthogonality_defect(reduced) <= 1.1 * _orthogonality_defect(base)).all()


def test_reduce_lattice_leaves_a_reduced_cell_alone():
    cell = torch.diag(torch.tensor([3.0, 4.0, 5.0], dtype=F64))[None]
    reduced, transform = reduce_lattice(cell)
    assert torch.equal(transform[0], torch.eye(3, dtype=F64))
    assert torch.equal(reduced, cell)


# ---------------------------------------------------------------------- torus
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_wrap_lands_in_unit_interval(dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.cat([
        (torch.rand(100_000, generator=g, dtype=F64) * 2000 - 1000).to(dtype),
        torch.tensor([-1e-9, -1e-12, -0.0, 0.0, 1.0, -1.0, 2.0, 0.999999, -5e-8], dtype=dtype),
        -torch.rand(1000, generator=g, dtype=dtype) * 1e-6,
    ])
    w = wrap(x)
    assert w.dtype == dtype
    assert (w >= 0).all() and (w < 1).all()
    k = x.double() - w.double()  # an integer, up to the rounding of x itself
    assert ((k - k.round()).abs() <= 1e-3).all()
    assert wrap(torch.tensor([-1e-9], dtype=torch.float32)).item() == 0.0
    assert wrap(torch.tensor([1.0], dtype=dtype)).item() == 0.0
    assert wrap(torch.tensor([0.25, 1.25, -0.75], dtype=dtype)).tolist() == [0.25] * 3


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shortest_displacement_is_the_nearest_representative(dtype):
    g = torch.Generator().manual_seed(1)
    half = torch.arange(-20, 20, dtype=dtype) + 0.5
    x = torch.cat([
        torch.rand(100_000, generator=g, dtype=dtype) * 40 - 20,
        half, torch.nextafter(half, torch.tensor(-1e9, dtype=dtype)),
        torch.nextafter(half, torch.tensor(1e9, dtype=dtype)),
        torch.tensor([0.0, -0.0, 1.0, -1.0, 1e-9, -1e-9], dtype=dtype),
    ])
    d = shortest_displacement(x)
    assert d.dtype == dtype
    assert (d >= -0.5).all() and (d < 0.5).all()
    k = x.double() - d.double()
    assert ((k - k.round()).abs() <= 1e-5).all()  # differs from x by an integer
    # Oracle: the representative of smallest magnitude among x - round(x) + {-1, 0, 1}.
    xd = x.double()
    candidates = (xd - xd.round())[:, None] + torch.tensor([-1.0, 0.0, 1.0], dtype=F64)
    best = candidates.abs().min(dim=1).values
    assert ((d.double().abs() - best).abs() <= 1e-5).all()
    assert shortest_displacement(torch.tensor([0.5, -0.5, 0.75], dtype=dtype)).tolist() == [
        -0.5, -0.5, -0.25]
