"""Metrics on hand-made cases with known answers."""

from pathlib import Path

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from autoperi.data.io import read_structures
from autoperi.eval.match import STRICT, csp_rms, csp_summary
from autoperi.eval.validity import (
    compositional_validity,
    minimum_distances,
    structural_validity,
)
from autoperi.testing import canonical_crystals

DATA = Path(__file__).parent / "data"


def test_structural_validity_hand_made_cases():
    crystals = canonical_crystals()
    good = list(crystals.values())
    overlapping = crystals["fcc_Cu"].copy()
    overlapping.append("Cu", [0.05, 0.0, 0.0])  # 0.18 Å from the origin atom
    tiny_cell = Structure(Lattice.cubic(0.4), ["H"], [[0, 0, 0]])  # its own image at 0.4 Å
    flags = structural_validity(good + [overlapping, tiny_cell])
    assert flags.tolist() == [True] * len(good) + [False, False]


def test_minimum_distance_of_fcc_is_a_over_sqrt2():
    d = minimum_distances([canonical_crystals()["fcc_Cu"]])
    assert d[0] == pytest.approx(3.61 / np.sqrt(2), abs=1e-9)


def test_compositional_validity_cases():
    cases = {
        "NaCl": True, "Fe2O3": True, "SrTiO3": True,  # neutral with common states
        "NaCl2": False, "NaF3": False,  # charge-imbalanced
        "C": True,  # a single element
        "CuZn": True, "Fe3Al": True,  # all-metal alloys
        "U3O8": False,  # needs mixed valence
        "Lr2O3": False,  # no data for lawrencium: not provable, but no crash
    }
    flags = compositional_validity(list(cases))
    assert dict(zip(cases, flags.tolist())) == cases


def test_real_data_is_valid():
    real = read_structures(DATA / "mp20_sample.csv").structures
    assert structural_validity(real).all()
    assert compositional_validity(real).mean() > 0.8


def test_csp_match_identical_perturbed_and_wrong():
    crystals = canonical_crystals()
    ref = [crystals["perovskite_SrTiO3"], crystals["rocksalt_NaCl"]]
    same = [s.copy() for s in ref]
    same[0] = same[0].copy()
    same[0].perturb(0.05, min_distance=0.05)  # tiny noise: still a match
    # Same composition, other structure: NaCl in the CsCl arrangement is no rocksalt.
    cscl_type = Structure(Lattice.cubic(3.3), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    wrong = [crystals["perovskite_SrTiO3"].copy(), cscl_type]
    rms_same = csp_rms(same, ref)
    assert rms_same[1] == pytest.approx(0.0, abs=1e-6) and 0 < rms_same[0] < 0.1
    rms_wrong = csp_rms(wrong, ref)
    assert rms_wrong[0] == pytest.approx(0.0, abs=1e-6) and np.isnan(rms_wrong[1])
    with pytest.raises(ValueError):
        csp_rms(same[:1], ref)
    assert np.isnan(csp_rms([wrong[1]], [ref[1]], STRICT)[0])


def test_csp_summary_any_of_k():
    rms = np.array([[np.nan, 0.1], [np.nan, np.nan], [0.2, 0.05]])
    s = csp_summary(rms)
    assert s["match_rate"] == pytest.approx(2 / 3)
    assert s["rmse"] == pytest.approx((0.1 + 0.05) / 2)
    assert s["samples_per_reference"] == 2


def test_compositional_validity_agrees_with_brute_force_and_scales():
    import itertools
    import time

    from smact import Element as SmactElement
    from smact.screening import pauling_test

    from autoperi.eval.validity import _formula_counts

    def brute(formula):
        counts = _formula_counts(formula)
        elements = [SmactElement(s) for s, _ in counts]
        states = [e.oxidation_states for e in elements]
        eneg = [e.pauling_eneg for e in elements]
        n = [c for _, c in counts]
        return any(sum(q * k for q, k in zip(combo, n)) == 0 and pauling_test(combo, eneg)
                   for combo in itertools.product(*states))

    for formula in ["Fe3O4", "LiFePO4", "CaTiO3", "Na2SO4", "KMnO4", "NaCl2", "CsPbI3",
                    "Cu2ZnSnS4", "LiCoO2F"]:
        assert compositional_validity([formula])[0] == brute(formula), formula
    # A 16-element sample (what an untrained generator makes) is decided in milliseconds,
    # not by enumerating ~10^11 combinations.
    start = time.perf_counter()
    compositional_validity(["SrLuSc2TaNb2ZnGa2FeGeMoAsPdRuCSe"])
    assert time.perf_counter() - start < 2.0


def test_space_groups_of_known_crystals_and_zero_for_non_finite_ones():
    from autoperi.eval.distribution import space_groups

    salt = canonical_crystals()["rocksalt_NaCl"]
    rutile = Structure.from_spacegroup("P4_2/mnm", Lattice.tetragonal(4.59, 2.96),
                                       ["Ti", "O"], [[0, 0, 0], [0.305, 0.305, 0]])
    broken = Structure(Lattice.cubic(4.0), ["Na"], [[np.nan, 0, 0]])  # spglib would segfault
    assert space_groups([salt, broken, rutile], progress=False).tolist() == [225, 0, 136]
