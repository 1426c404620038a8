"""geometry/clash.py against pymatgen's periodic distances (all images) and the symmetries
of the representation; and its use in the sampler."""

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure

from autoperi.data.features import covalent_radii
from autoperi.geometry.clash import clash_displacement, resolve_clashes
from autoperi.geometry.torus import wrap
from autoperi.testing import canonical_crystals, random_batch, random_rotation

F64 = torch.float64


def _pushed(structure: Structure, min_distance: float) -> Structure:
    frac = torch.tensor(structure.frac_coords, dtype=F64)
    lattice = torch.tensor(structure.lattice.matrix, dtype=F64)[None]
    move = clash_displacement(frac, lattice, torch.tensor([len(structure)]), min_distance)
    return Structure(structure.lattice, structure.species, wrap(frac + move).numpy())


def test_isolated_pair_ends_exactly_at_the_minimum_distance():
    s = Structure(Lattice.cubic(8.0), ["O", "O", "Na"],
                  [[0.5, 0.5, 0.5], [0.5 + 0.6 / 8, 0.5, 0.5], [0.0, 0.0, 0.0]])
    out = _pushed(s, 1.0)
    assert out.get_distance(0, 1) == pytest.approx(1.0, abs=1e-9)
    # each atom moved by half the deficit along the axis; the far atom stayed
    assert out[0].coords == pytest.approx([4.0 - 0.2, 4.0, 4.0], abs=1e-9)
    assert out[2].coords == pytest.approx([0.0, 0.0, 0.0], abs=1e-12)


def test_pair_across_the_cell_boundary_moves_apart_through_it():
    s = Structure(Lattice.cubic(10.0), ["N", "N"], [[0.02, 0.3, 0.3], [0.98, 0.3, 0.3]])
    out = _pushed(s, 1.0)
    assert out.get_distance(0, 1) == pytest.approx(1.0, abs=1e-9)
    assert out.frac_coords[0][0] == pytest.approx(0.05, abs=1e-9)  # moved +x, not across
    assert out.frac_coords[1][0] == pytest.approx(0.95, abs=1e-9)


def test_skewed_cell_clash_through_a_non_minimum_fractional_image():
    # a cell 1.5 Å high: the wrapped fractional offset of the pair is 2.44 Å long, the
    # shortest image 0.86 Å (pymatgen, all images)
    lattice = Lattice([[3.0, 0.0, 0.0], [2.6, 1.5, 0.0], [0.0, 0.0, 3.0]])
    s = Structure(lattice, ["Si", "Si"], [[0.1, 0.1, 0.2], [0.72, 0.64, 0.24]])
    assert s.get_distance(0, 1) == pytest.approx(0.8603, abs=1e-4)
    assert len(s.get_neighbors(s[0], 0.9)) == 1  # one clashing image (the next: 0.965 Å)
    assert _pushed(s, 0.9).get_distance(0, 1) == pytest.approx(0.9, abs=1e-9)


@pytest.mark.parametrize("name", sorted(canonical_crystals()))
def test_real_crystals_are_left_alone(name):
    s = canonical_crystals()[name]
    out = _pushed(s, 1.0)  # every real neighbour is > 1.5 Å away
    assert np.allclose(out.frac_coords, s.frac_coords, atol=1e-12)


def test_coincident_atoms_get_no_direction():
    s = Structure(Lattice.cubic(6.0), ["O", "O"], [[0.3, 0.3, 0.3], [0.3, 0.3, 0.3]])
    assert np.allclose(_pushed(s, 1.0).frac_coords, s.frac_coords)


def test_equivariant_under_rotation_translation_and_permutation():
    batch = random_batch(num_crystals=5, max_atoms=6, seed=3)
    # squeeze the cells so that many pairs clash
    lattice, frac, n = 0.4 * batch.lattice, batch.frac_coords, batch.num_atoms
    move = clash_displacement(frac, lattice, n, 1.5)
    assert move.abs().max() > 1e-3  # something clashed
    rotated = clash_displacement(frac, lattice @ random_rotation(1).T, n, 1.5)
    assert torch.allclose(move, rotated, atol=1e-10)
    shift = torch.rand(len(n), 3, generator=torch.Generator().manual_seed(2), dtype=F64)
    shifted = clash_displacement(wrap(frac + shift[batch.crystal_idx]), lattice, n, 1.5)
    assert torch.allclose(move, shifted, atol=1e-10)
    perm = torch.cat([torch.flip(torch.arange(s, s + k), [0]) for s, k in
                      zip((torch.cumsum(n, 0) - n).tolist(), n.tolist())])
    permuted = clash_displacement(frac[perm], lattice, n, 1.5)
    assert torch.allclose(move[perm], permuted, atol=1e-10)


def test_each_pass_lowers_the_total_overlap():
    # a random squeezed crystal: the summed deficit of all clashing pairs shrinks every pass
    batch = random_batch(num_crystals=1, max_atoms=8, seed=5)
    s = Structure(Lattice(0.5 * batch.lattice[0].numpy()), ["C"] * int(batch.num_atoms[0]),
                  batch.frac_coords.numpy())

    def deficit(st):
        d = st.distance_matrix[np.triu_indices(len(st), 1)]
        return np.clip(1.2 - d, 0, None).sum()

    before = deficit(s)
    assert before > 0.1
    for _ in range(3):
        s = _pushed(s, 1.2)
        after = deficit(s)
        assert after < before
        before = after


def test_per_atom_radii_set_each_pairs_floor_and_the_larger_floor_acts():
    # an O-H pair 0.5 Å apart and an O-O pair 0.8 Å apart, far from each other
    s = Structure(Lattice.cubic(12.0), ["O", "H", "O", "O"],
                  [[0.1, 0.1, 0.1], [0.1 + 0.5 / 12, 0.1, 0.1],
                   [0.6, 0.6, 0.6], [0.6 + 0.8 / 12, 0.6, 0.6]])
    r = covalent_radii()
    assert r[1] == pytest.approx(0.31) and r[8] == pytest.approx(0.66)  # Cordero et al.
    radii = torch.tensor([r[z] for z in s.atomic_numbers], dtype=F64)

    def pushed(min_distance):
        frac = torch.tensor(s.frac_coords, dtype=F64)
        lattice = torch.tensor(s.lattice.matrix, dtype=F64)[None]
        move = clash_displacement(frac, lattice, torch.tensor([4]), min_distance, radii)
        return Structure(s.lattice, s.species, wrap(frac + move).numpy())

    out = pushed(0.0)
    assert out.get_distance(0, 1) == pytest.approx(0.97, abs=1e-9)  # r_O + r_H
    assert out.get_distance(2, 3) == pytest.approx(1.32, abs=1e-9)  # 2 r_O
    out = pushed(1.2)  # the global floor is larger for O-H only
    assert out.get_distance(0, 1) == pytest.approx(1.2, abs=1e-9)
    assert out.get_distance(2, 3) == pytest.approx(1.32, abs=1e-9)


def test_resolve_clashes_separates_a_crowded_row_that_one_pass_cannot():
    # five atoms in a row 0.3 Å apart: one pass pushes inner atoms into their neighbours
    s = Structure(Lattice.cubic(20.0), ["Si"] * 5, [[0.5 + k * 0.3 / 20, 0.5, 0.5]
                                                     for k in range(5)])
    frac = torch.tensor(s.frac_coords, dtype=F64)
    lattice = torch.tensor(s.lattice.matrix, dtype=F64)[None]
    n = torch.tensor([5])

    def shortest(f):
        d = Structure(s.lattice, s.species, f.numpy()).distance_matrix
        return d[np.triu_indices(5, 1)].min()

    once = resolve_clashes(frac, lattice, n, 1.0, passes=1)
    many = resolve_clashes(frac, lattice, n, 1.0, passes=200)
    assert shortest(once) < 0.99
    assert shortest(many) == pytest.approx(1.0, abs=1e-3)
    assert torch.equal(resolve_clashes(frac, lattice, n, 0.2, passes=5), frac)  # none < 0.2
