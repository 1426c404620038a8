"""Baseline generators and `autoperi benchmark` on real rows."""

import json
from pathlib import Path

import numpy as np
import pytest
import spglib
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Structure

from autoperi.baselines import PerturbedTraining, RandomSymmetric
from autoperi.baselines.random_symmetric import CENTRING
from autoperi.benchmark import Protocol, protocol, run
from autoperi.cli import main
from autoperi.data.io import read_structures
from autoperi.testing import canonical_crystals

DATA = Path(__file__).parent / "data"
pytest.importorskip("pyxtal")


@pytest.fixture(scope="module")
def real() -> list[Structure]:
    return read_structures(DATA / "mp20_sample.csv").structures


def operations(structure: Structure) -> int:
    cell = (structure.lattice.matrix, structure.frac_coords, structure.atomic_numbers)
    return len(spglib.get_symmetry_dataset(cell, symprec=1e-3).rotations)


def test_random_symmetric_keeps_compositions_and_has_the_symmetry(real):
    from pyxtal.symmetry import Group

    baseline = RandomSymmetric(real)
    out = baseline.generate(12, seed=3)
    formulas = {s.composition.reduced_formula for s in real}
    for s in out:
        assert s.composition.reduced_formula in formulas
        group = s.properties["baseline_space_group"]
        # atoms on Wyckoff positions of `group`: the primitive cell has at least the
        # group's operations (conventional count / centring), maybe more
        order = len(Group(group)[0]) // CENTRING[Group(group).symbol[0]]
        assert operations(s) >= order
    assert sum(s.properties["baseline_space_group"] > 1 for s in out) >= 6
    again = baseline.generate(12, seed=3)
    assert all(np.allclose(a.frac_coords, b.frac_coords) for a, b in zip(out, again))


def test_random_symmetric_csp_uses_the_input_composition_and_falls_back_to_p1(real):
    baseline = RandomSymmetric(real)
    inputs = real[:5]
    out = baseline.predict(inputs, seed=1)
    assert [s.composition for s in out] == [s.composition for s in inputs]  # atom counts too
    # a 1:1:1:1:1 composition has no Wyckoff assignment in Pm-3m (only 1a, 1b, 3c, 3d, ...
    # with one 1-fold site of each kind): P1 is the answer
    odd = Structure(np.eye(3) * 5, ["Ba", "Ti", "O", "N", "F"],
                    np.random.default_rng(0).uniform(size=(5, 3)))
    got = baseline.crystal(odd, [221, 221], np.random.default_rng(0))
    assert got.properties["baseline_space_group"] == 1
    assert got.composition == odd.composition


def test_perturbed_training_moves_atoms_by_sigma_and_stays_matchable(real):
    crystal = canonical_crystals()["rocksalt_NaCl"].copy()
    crystal.make_supercell([4, 4, 4])  # 512 atoms: the displacement statistics are tight
    baseline = PerturbedTraining([crystal], sigma=0.05, strain=0.0)
    shaken = baseline.generate(1, seed=0)[0]
    step = shaken.frac_coords - crystal.frac_coords
    step -= np.round(step)
    rms = np.sqrt(np.mean((step @ crystal.lattice.matrix) ** 2))
    assert rms == pytest.approx(0.05, rel=0.1)
    assert np.allclose(shaken.lattice.matrix, crystal.lattice.matrix)
    same = PerturbedTraining(real, sigma=0.0, strain=0.0).generate(3, seed=2)
    def periodic_equal(a, b):
        step = a.frac_coords - b.frac_coords
        return np.allclose(step - np.round(step), 0, atol=1e-9)

    assert all(any(len(s) == len(r) and periodic_equal(s, r)
                   and np.allclose(s.lattice.matrix, r.lattice.matrix) for r in real)
               for s in same)  # no noise: exact training crystals
    strained = PerturbedTraining(real[:1], sigma=0.0, strain=0.02).generate(1, seed=0)[0]
    assert StructureMatcher(stol=0.5, ltol=0.3, angle_tol=10).fit(strained, real[0])
    assert 0.9 < strained.volume / real[0].volume < 1.1 and strained.volume != real[0].volume


def test_protocol_overrides_and_errors():
    p = protocol("perov-5", num=7, generators=("pyxtal",), steps=None)
    assert p == Protocol("perov-5", "perov-5", num=7, cov="perov-5", generators=("pyxtal",))
    with pytest.raises(ValueError, match="unknown protocol"):
        protocol("perov-6")
    with pytest.raises(ValueError, match="unknown generators"):
        protocol("perov-5", generators=("magic",))
    assert main(["benchmark", "mp-20", "--out", "x", "--relax"]) == 2  # --relax needs --mlip


def test_benchmark_run_writes_reports_and_comparison(real, tmp_path):
    p = protocol("mp-20", num=6, generators=("pyxtal", "perturbed"))
    rows = run(p, tmp_path / "bench", fingerprints=False, plots=False, progress=False,
               splits=(real[:40], real[40:]))
    assert [r["generator"] for r in rows] == ["pyxtal", "perturbed"]
    saved = json.loads((tmp_path / "bench" / "comparison.json").read_text())
    assert saved[1]["novelty"] == 0.0  # shaken copies of training crystals are not new
    assert saved[0]["structural_validity"] == 1.0  # pyxtal keeps atoms apart
    table = (tmp_path / "bench" / "comparison.md").read_text()
    assert "| pyxtal |" in table and "| perturbed |" in table and "CSP match" not in table
    for name in ("pyxtal", "perturbed"):
        assert len(read_structures(tmp_path / "bench" / name / "samples.extxyz").structures) == 6
        assert (tmp_path / "bench" / name / "metrics.json").exists()
    csp = run(protocol("mp-20", task="csp", generators=("perturbed",)), tmp_path / "csp",
              fingerprints=False, plots=False, progress=False, splits=(real[:40], real[40:]))
    assert csp[0]["csp.match_rate"] == 1.0  # the answer, shaken, still matches
