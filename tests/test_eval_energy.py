"""Energies, batched relaxation, energy above hull and phonons on hand-made cases.

Exact algorithmic checks use a float64 Lennard-Jones potential (ASE's, wrapped in the
`Potential` protocol); physics checks use the real MLIP (CHGNet, skipped if not installed).
"""

import socket
from pathlib import Path

import numpy as np
import pytest
from ase.calculators.lj import LennardJones
from ase.filters import FrechetCellFilter
from ase.optimize import FIRE
from ase.stress import voigt_6_to_full_3x3_stress
from ase.units import GPa
from pymatgen.analysis.phase_diagram import PDEntry
from pymatgen.core import Lattice, Structure
from pymatgen.io.ase import AseAtomsAdaptor

from autoperi.eval.energy import (
    CHGNetPotential,
    Potential,
    PotentialCalculator,
    Prediction,
    _rmsd,
    default_potential,
    e_above_hull,
    energies,
    generalized_forces,
    reference_entries,
    relax,
)
from autoperi.eval.phonons import lowest_non_acoustic, phonons, supercell_size
from autoperi.testing import canonical_crystals


# --------------------------------------------------------------------------- helpers
class LJPotential:
    """ASE's Lennard-Jones (smooth cutoff), float64, one structure at a time."""

    name = "LJ"

    def predict(self, structures, forces=True):
        out_e, out_f, out_s = [], [], []
        for s in structures:
            atoms = AseAtomsAdaptor.get_atoms(s)
            atoms.calc = LennardJones(sigma=2.3, epsilon=0.1, rc=5.5, smooth=True)
            out_e.append(atoms.get_potential_energy())
            out_f.append(atoms.get_forces())
            out_s.append(voigt_6_to_full_3x3_stress(atoms.get_stress()))
        return Prediction(np.array(out_e), out_f, np.array(out_s), [None] * len(structures))


class ExpandingPotential:
    """E = -V (eV, V in Å^3): a constant negative pressure that blows the cell up."""

    name = "expanding"

    def predict(self, structures, forces=True):
        e = np.array([-s.volume for s in structures])
        f = [np.zeros((len(s), 3)) for s in structures]
        stress = np.array([-np.eye(3) for _ in structures])  # (1/V) dE/dstrain = -1
        return Prediction(e, f, stress, [None] * len(structures))


def rattled(structure: Structure, scale: float = 1.0, amount: float = 0.05, seed: int = 0):
    s = structure.copy()
    s.scale_lattice(s.volume * scale)
    noise = np.random.default_rng(seed).normal(0, amount, (len(s), 3))
    return Structure(s.lattice, s.species, s.cart_coords + noise, coords_are_cartesian=True,
                     to_unit_cell=True)


def lj_crystals():
    """Small fcc cells of LJ atoms with different sizes, rattled and strained."""
    base = Structure(Lattice.cubic(3.5), ["Ar"] * 4,
                     [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    out = []
    for k, (reps, scale) in enumerate([((1, 1, 1), 1.08), ((2, 1, 1), 0.95),
                                       ((1, 1, 1), 1.0)]):
        s = base * reps
        s.apply_strain([0.02 * k, -0.01, 0.015])
        out.append(rattled(s, scale, 0.08, seed=k))
    return out


def ase_relax(structure, calc, fmax, steps, cell=True, pressure=0.0):
    atoms = AseAtomsAdaptor.get_atoms(structure)
    atoms.calc = calc
    opt = FIRE(FrechetCellFilter(atoms, scalar_pressure=pressure * GPa) if cell else atoms,
               logfile=None)
    converged = opt.run(fmax=fmax, steps=steps)
    return atoms, opt.nsteps, converged


@pytest.fixture(scope="module")
def chgnet():
    pytest.importorskip("chgnet")
    return default_potential()


def perovskite(a_site: str, a: float) -> Structure:
    return Structure(Lattice.cubic(a), [a_site, "Ti", "O", "O", "O"],
                     [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])


def diamond_si(a: float = 5.43) -> Structure:
    return Structure.from_spacegroup("Fd-3m", Lattice.cubic(a), ["Si"],
                                     [[0, 0, 0]]).get_primitive_structure()


def zincblende(a_el: str, b_el: str, a: float) -> Structure:
    return Structure.from_spacegroup("F-43m", Lattice.cubic(a), [a_el, b_el],
                                     [[0, 0, 0], [0.25, 0.25, 0.25]]).get_primitive_structure()


# --------------------------------------------------------------------------- algorithm
def test_cell_forces_equal_ase_frechet_cell_filter():
    rng = np.random.default_rng(1)
    s = rattled(canonical_crystals()["perovskite_SrTiO3"], 1.0, 0.1)
    atoms = AseAtomsAdaptor.get_atoms(s)
    atoms.calc = LennardJones(sigma=2.3, epsilon=0.1, rc=5.5, smooth=True)
    filt = FrechetCellFilter(atoms)
    x = filt.get_positions()
    x[len(atoms):] += rng.normal(0, 0.3, (3, 3))  # a sizeable, non-symmetric deformation
    filt.set_positions(x)
    expected = filt.get_forces()
    # ASE stores n log(n F) for the cell (n atoms); our variable is X = log(F)
    log_deform = (x[len(atoms):] / len(atoms) - np.log(len(atoms)) * np.eye(3))[None]
    forces = atoms.get_forces()[None]
    stress = voigt_6_to_full_3x3_stress(atoms.get_stress())[None]
    got_atoms, got_cell = generalized_forces(forces, stress, atoms.cell.array[None],
                                             log_deform, np.array([float(len(atoms))]))
    np.testing.assert_allclose(got_atoms[0], expected[:len(atoms)], atol=1e-10)
    np.testing.assert_allclose(got_cell[0], expected[len(atoms):], atol=1e-10)


@pytest.mark.parametrize("relax_cell", [True, False])
def test_relax_follows_ase_fire_exactly(relax_cell):
    pot = LJPotential()
    structures = lj_crystals()
    got = relax(structures, fmax=0.05, steps=300, relax_cell=relax_cell, potential=pot)
    for k, s in enumerate(structures):
        atoms, nsteps, converged = ase_relax(s, PotentialCalculator(pot), 0.05, 300, relax_cell)
        assert got.steps[k] == nsteps
        assert got.converged[k] == converged
        assert got.e_relaxed[k] == pytest.approx(atoms.get_potential_energy() / len(s),
                                                 abs=1e-9)
        np.testing.assert_allclose(got.structures[k].lattice.matrix, atoms.cell.array,
                                   atol=1e-8)
    assert got.converged.all() and (got.steps > 5).all()
    if not relax_cell:
        for s, r in zip(structures, got.structures, strict=True):
            np.testing.assert_array_equal(r.lattice.matrix, s.lattice.matrix)


def test_relax_under_pressure_follows_ase_and_shrinks_the_cell():
    pot = LJPotential()
    structures = lj_crystals()
    free = relax(structures, fmax=0.05, steps=300, potential=pot)
    squeezed = relax(structures, fmax=0.05, steps=300, potential=pot, pressure=5.0)
    for k, s in enumerate(structures):
        atoms, nsteps, converged = ase_relax(s, PotentialCalculator(pot), 0.05, 300,
                                             pressure=5.0)
        assert squeezed.steps[k] == nsteps and squeezed.converged[k] == converged
        np.testing.assert_allclose(squeezed.structures[k].lattice.matrix, atoms.cell.array,
                                   atol=1e-8)
        # at the enthalpy minimum the stress balances the pressure: -trace(stress)/3 = p
        stress = voigt_6_to_full_3x3_stress(atoms.get_stress())
        assert -np.trace(stress) / 3 / GPa == pytest.approx(5.0, abs=0.5)
        assert squeezed.structures[k].volume < free.structures[k].volume
        # reported energies stay E, not E + pV: above the zero-pressure minimum's
        assert squeezed.e_relaxed[k] > free.e_relaxed[k]


def test_batched_relax_equals_one_by_one_in_float64():
    pot = LJPotential()
    structures = lj_crystals()
    batched = relax(structures, fmax=0.05, steps=300, potential=pot, batch_size=2)
    for k, s in enumerate(structures):
        alone = relax([s], fmax=0.05, steps=300, potential=pot)
        assert batched.steps[k] == alone.steps[0]
        assert batched.e_relaxed[k] == pytest.approx(alone.e_relaxed[0], abs=1e-9)
        np.testing.assert_allclose(batched.structures[k].cart_coords,
                                   alone.structures[0].cart_coords, atol=1e-6)


def test_structures_stop_at_the_step_limit_unconverged():
    got = relax(lj_crystals()[:2], fmax=1e-6, steps=7, potential=LJPotential())
    assert got.steps.tolist() == [7, 7]
    assert not got.converged.any()
    assert all(r is None for r in got.reasons)
    assert np.all(got.max_force >= 1e-6)


def test_exploding_cell_is_flagged_mid_relaxation_and_the_batch_goes_on():
    lj, good = LJPotential(), lj_crystals()[0]

    class Mixed:  # good structures see LJ, Xe ones see an ever-growing cell
        name = "mixed"

        def predict(self, structures, forces=True):
            parts = [ExpandingPotential() if s.species[0].symbol == "Xe" else lj
                     for s in structures]
            preds = [p.predict([s]) for p, s in zip(parts, structures, strict=True)]
            return Prediction(np.array([p.energy[0] for p in preds]),
                              [p.forces[0] for p in preds],
                              np.array([p.stress[0] for p in preds]), [None] * len(preds))

    blowing = good.copy()
    blowing.replace_species({"Ar": "Xe"})
    got = relax([blowing, good], fmax=0.02, steps=300, potential=Mixed())
    assert got.structures[0] is None and np.isnan(got.e_relaxed[0])
    assert "exploded after" in got.reasons[0] and "volume changed" in got.reasons[0]
    assert np.isfinite(got.e_unrelaxed[0])
    alone = relax([good], fmax=0.02, steps=300, potential=lj)
    assert got.converged[1] and got.reasons[1] is None
    assert got.e_relaxed[1] == pytest.approx(alone.e_relaxed[0], abs=1e-9)


def test_periodic_rmsd():
    lattice = np.diag([4.0, 5.0, 6.0])
    frac = np.array([[0.0, 0.0, 0.0], [0.5, 0.5, 0.5]])
    shifted = (frac + [0.3, 0.9, 0.99]) % 1.0  # a rigid translation across the boundary
    assert _rmsd(frac, shifted, lattice) == pytest.approx(0.0, abs=1e-12)
    moved = frac.copy()
    moved[1, 0] += 0.1 / 4.0  # one atom moves 0.1 Å: each moves 0.05 Å about the centre
    assert _rmsd(frac, moved, lattice) == pytest.approx(0.05, abs=1e-12)


# --------------------------------------------------------------------------- the MLIP
def test_mlip_weights_come_from_the_installed_package_without_network(chgnet, monkeypatch):
    import chgnet as chgnet_package

    fresh = CHGNetPotential()
    assert isinstance(fresh, Potential)
    path = fresh.weights_path
    assert path.is_file() and path.stat().st_size > 1_000_000
    assert path.parents[2] == Path(chgnet_package.__file__).parent  # chgnet/pretrained/0.3.0

    def no_network(*args, **kwargs):
        raise OSError("network access attempted during an offline test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    e = fresh.predict([canonical_crystals()["fcc_Cu"]], forces=False).energy
    assert np.isfinite(e[0])


def test_energies_of_real_crystals_match_dft_scale(chgnet):
    crystals = canonical_crystals()
    got = energies(list(crystals.values()), chgnet)
    assert all(r is None for r in got.reasons)
    assert np.all(np.isfinite(got.per_atom)) and np.all(got.per_atom < -1.0)
    # Materials Project (PBE) energies per atom that CHGNet was trained to reproduce
    dft = {"fcc_Cu": -4.10, "bcc_Fe": -8.47, "diamond_C": -9.09, "hcp_Mg": -1.60}
    names = list(crystals)
    for name, value in dft.items():
        assert got.per_atom[names.index(name)] == pytest.approx(value, abs=0.15), name


def test_forces_and_stress_agree_with_chgnet_and_finite_differences(chgnet):
    from chgnet.model.dynamics import CHGNetCalculator

    s = rattled(canonical_crystals()["rocksalt_NaCl"], 0.97, 0.1)
    s.apply_strain([0.02, -0.03, 0.01])
    pred = chgnet.predict([s])
    atoms = AseAtomsAdaptor.get_atoms(s)
    atoms.calc = CHGNetCalculator(model=chgnet.model, use_device="cpu")
    assert pred.energy[0] == pytest.approx(atoms.get_potential_energy(), abs=1e-4)
    np.testing.assert_allclose(pred.forces[0], atoms.get_forces(), atol=1e-4)
    np.testing.assert_allclose(pred.stress[0], voigt_6_to_full_3x3_stress(atoms.get_stress()),
                               atol=1e-5)
    # independent oracle: central finite differences of the energy (float32 model: loose)
    h, k = 0.01, 3
    plus, minus = s.copy(), s.copy()
    plus.translate_sites([k], [h, 0, 0], frac_coords=False, to_unit_cell=False)
    minus.translate_sites([k], [-h, 0, 0], frac_coords=False, to_unit_cell=False)
    e = chgnet.predict([plus, minus], forces=False).energy
    assert pred.forces[0][k, 0] == pytest.approx(-(e[0] - e[1]) / (2 * h), abs=0.03)
    eps = 0.002
    grown, shrunk = s.copy(), s.copy()
    grown.apply_strain([eps, 0, 0])
    shrunk.apply_strain([-eps, 0, 0])
    e = chgnet.predict([grown, shrunk], forces=False).energy
    assert pred.stress[0][0, 0] == pytest.approx((e[0] - e[1]) / (2 * eps) / s.volume,
                                                 abs=2e-3)


def test_bad_structures_get_nan_and_a_reason_without_stopping_the_batch(chgnet):
    crystals = canonical_crystals()
    good = crystals["diamond_C"]
    close = crystals["fcc_Cu"].copy()
    close.append("Cu", [0.2 / 3.61, 0, 0])  # 0.2 Å from the atom at the origin
    huge = Structure(Lattice.cubic(40.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    squashed = Structure(Lattice.cubic(1.0), ["Li"], [[0, 0, 0]])  # 1 Å^3 per atom
    batch = [close, good, huge, squashed]
    got = energies(batch, chgnet)
    assert np.isnan(got.per_atom[[0, 2, 3]]).all()
    assert "0.200 Å apart" in got.reasons[0]
    assert "isolated" in got.reasons[2] or "no neighbour" in got.reasons[2]
    assert got.reasons[3] is not None and got.reasons[1] is None
    assert got.per_atom[1] == pytest.approx(energies([good], chgnet).per_atom[0], abs=1e-5)
    rel = relax(batch, fmax=0.1, steps=50, potential=chgnet)
    assert [r is None for r in rel.reasons] == [False, True, False, False]
    assert rel.converged[1] and rel.structures[1] is not None
    assert all(rel.structures[k] is None for k in (0, 2, 3))


def test_compressed_crystal_relaxes_with_positive_relaxation_energy(chgnet):
    s = rattled(diamond_si(), scale=0.88, amount=0.05)
    got = relax([s], fmax=0.05, steps=300, potential=chgnet)
    assert got.reasons[0] is None and got.converged[0] and got.max_force[0] < 0.05
    assert got.relaxation_energy[0] > 0.05 and got.low_relaxation_energy[0]
    assert got.volume_ratio[0] > 1.1  # it expands back
    assert 0.0 < got.rmsd[0] < 0.3
    again = energies([got.structures[0]], chgnet).per_atom[0]
    assert again == pytest.approx(got.e_relaxed[0], abs=1e-4)
    assert got.structures[0].lattice.a * 2**0.5 == pytest.approx(5.45, abs=0.1)


def test_batched_chgnet_relax_equals_one_by_one_and_ase(chgnet):
    crystals = canonical_crystals()
    structures = [rattled(crystals[n].get_primitive_structure(), 1.04, 0.06, seed=k)
                  for k, n in enumerate(["perovskite_SrTiO3", "rocksalt_NaCl"])]
    batched = relax(structures, fmax=0.05, steps=200, potential=chgnet)
    assert batched.converged.all() and (batched.steps > 3).all()
    for k, s in enumerate(structures):
        alone = relax([s], fmax=0.05, steps=200, potential=chgnet)
        assert batched.e_relaxed[k] == pytest.approx(alone.e_relaxed[0], abs=2e-4)
        assert abs(int(batched.steps[k]) - int(alone.steps[0])) <= 2
    atoms, nsteps, converged = ase_relax(structures[0], PotentialCalculator(chgnet), 0.05, 200)
    assert converged and abs(nsteps - int(batched.steps[0])) <= 2
    assert batched.e_relaxed[0] == pytest.approx(atoms.get_potential_energy() / len(atoms),
                                                 abs=2e-4)


# --------------------------------------------------------------------------- hull
def test_e_above_hull_on_hand_made_entries():
    refs = [PDEntry("A", 0.0), PDEntry("B", -1.0), PDEntry("AB", -2.0 * 2)]  # AB: -2 eV/atom
    queries = ["AB", "A", "AB", "A3B", "AC"]
    values = [-2.0, 0.3, -1.95, -0.8, -1.0]
    got = e_above_hull(queries, values, refs)
    # hull at A3B (x_B = 1/4) is halfway between A (0) and AB (-2): -1.0 eV/atom
    np.testing.assert_allclose(got.e_above_hull[:4], [0.0, 0.3, 0.05, 0.2], atol=1e-9)
    assert np.isnan(got.e_above_hull[4]) and "C" in got.reasons[4]
    assert got.stable.tolist() == [True, False, False, False, False]
    assert got.metastable.tolist() == [True, False, True, False, False]
    below = e_above_hull(["AB"], [-2.1], refs)
    assert below.e_above_hull[0] == pytest.approx(-0.1) and below.stable[0]


def test_e_above_hull_with_the_mlip(chgnet):
    si, c, sic = diamond_si(), zincblende("C", "C", 3.567), zincblende("Si", "C", 4.36)
    rocksalt_sic = Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(4.03), ["Si", "C"], [[0, 0, 0], [0.5, 0.5, 0.5]]
    ).get_primitive_structure()
    refs = reference_entries([si, c, sic], chgnet, relaxed=True, fmax=0.1)
    assert len(refs) == 3 and all(e.attribute["potential"] == chgnet.name for e in refs)
    own = np.array([e.energy_per_atom for e in refs])
    hull = e_above_hull([si, c, sic], own, refs)
    np.testing.assert_allclose(hull.e_above_hull, 0.0, atol=1e-9)
    assert hull.stable.all()
    polymorph = relax([rocksalt_sic], fmax=0.1, potential=chgnet)
    high = e_above_hull([rocksalt_sic], polymorph.e_relaxed, refs)
    assert high.e_above_hull[0] == pytest.approx(polymorph.e_relaxed[0] - own[2], abs=1e-9)
    assert high.e_above_hull[0] > 0.3 and not high.metastable[0]
    missing = e_above_hull([canonical_crystals()["perovskite_SrTiO3"]], [-8.0], refs)
    assert np.isnan(missing.e_above_hull[0]) and "O, Sr, Ti" in missing.reasons[0]


# --------------------------------------------------------------------------- phonons
def test_supercell_size():
    cubic = perovskite("Sr", 3.9)
    assert supercell_size(cubic, 8.0, 1000) == (3, 3, 3)
    assert supercell_size(cubic, 7.5, 1000) == (2, 2, 2)
    assert supercell_size(cubic, 8.0, 60) == (2, 2, 2)  # 135 atoms capped to 40
    slab = Structure(Lattice.orthorhombic(3.0, 4.5, 9.0), ["Cu"], [[0, 0, 0]])
    assert supercell_size(slab, 8.0, 1000) == (3, 2, 1)


def test_acoustic_modes_at_gamma_are_left_out_but_not_a_polar_instability():
    q = np.array([[0.0, 0, 0], [0.5, 0, 0], [1.0, 0, 0]])  # (1, 0, 0) is Gamma too
    stable = np.array([[-0.05, 0.0, 0.04, 4, 5, 6], [1, 1, 2, 5, 5, 6], [0.01, -0.02, 0, 4, 5, 6]])
    assert lowest_non_acoustic(stable, q) == 1.0
    polar = np.array([[-5.0, -5, -5, -0.01, 0, 0.01], [1, 1, 2, 5, 5, 6], [1, 1, 2, 5, 5, 6]])
    assert lowest_non_acoustic(polar, q) == -5.0
    soft = np.array([[0.0, 0, 0, 4, 5, 6], [-0.8, 1, 2, 5, 5, 6], [0.0, 0, 0, 4, 5, 6]])
    assert lowest_non_acoustic(soft, q) == -0.8


def test_phonons_find_the_cubic_perovskite_instability_and_not_in_silicon(chgnet):
    pytest.importorskip("phonopy")
    # cubic CaTiO3 is unstable at 0 K (octahedral tilts at R and M, polar modes);
    # diamond Si is stable. Both relaxed first (the cubic cell stays cubic by symmetry).
    relaxed = relax([perovskite("Ca", 3.84), diamond_si()], fmax=0.01, potential=chgnet)
    assert relaxed.converged.all()
    got = phonons(relaxed.structures, chgnet, supercell=(2, 2, 2))
    assert all(r is None for r in got.reasons)
    assert got.imaginary.tolist() == [True, False]
    assert got.lowest_frequency[0] < -2.0
    assert 0.5 < got.lowest_frequency[1] < 5.0
    assert got.stable.tolist() == [False, True]
