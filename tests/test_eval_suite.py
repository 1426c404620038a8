"""The benchmark suite: real data against itself, planted duplicates, hand-made failures,
the bucketed matcher against the all-pairs oracle, report files and the CLI."""

import json
from pathlib import Path

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from autoperi.cli import main
from autoperi.data.io import read_structures, write_structures
from autoperi.eval.distribution import (
    CoverageCutoffs,
    coverage,
    element_frequencies,
    element_kl,
    wasserstein,
)
from autoperi.eval.novelty import (
    first_matches,
    naive_first_matches,
    novelty,
    novelty_scores,
    rewritten_copy,
    tanimoto,
    uniqueness,
)
from autoperi.eval.report import write_report
from autoperi.eval.suite import SUITE_VERSION, evaluate
from autoperi.eval.validity import (
    BVR_TOLERANCE,
    bond_ratios,
    bond_validation_rate,
    shortest_relative_contacts,
)

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def real() -> list[Structure]:
    return read_structures(DATA / "mp20_sample.csv").structures  # 60 real MP-20 crystals


@pytest.fixture(scope="module")
def self_report(real):
    """40 real crystals evaluated against themselves (CSP task: also the match rate)."""
    return evaluate(real[:40], real[:40], task="csp", with_fingerprints=False, progress=False)


@pytest.fixture(scope="module")
def fingerprint_report(real):
    """Four small crystals with CrystalNN fingerprints (slow), evaluated against themselves."""
    small = [real[k] for k in (2, 13, 18, 43)]
    return evaluate(small, small, seed=7, progress=False)


def planted(real) -> list[Structure]:
    """Copies of real[3], real[5], real[7], real[9] in forms a careless key would miss."""
    supercell = real[5].copy()
    supercell.make_supercell([2, 1, 1])  # different number of sites, same primitive cell
    expanded = real[7].copy()
    expanded.scale_lattice(expanded.volume * 1.3)  # density differs; scale=True matches it
    translated = real[9].copy()
    translated.translate_sites(range(len(translated)), [0.1, 0.2, 0.3])
    return [rewritten_copy(real[3], perturb=0.02), supercell, expanded, translated]


# ---------------------------------------------------------------------- real data vs itself
def test_real_set_against_itself(self_report):
    a, frame = self_report.aggregate, self_report.per_structure
    assert a["structural_validity"] == 1.0 and frame["struct_valid"].all()
    assert a["uniqueness"] == 1.0 and (frame["duplicate_of"] == -1).all()
    assert a["novelty"] == 0.0 and (frame["known_match"] == np.arange(40)).all()
    assert frame["novelty_score"].abs().max() < 1e-9
    assert a["csp"]["match_rate"] == 1.0 and a["csp"]["rmse"] < 1e-6
    for key in ("wdist_density", "wdist_num_elements", "wdist_bond_length",
                "kl_element_frequency", "space_group_tvd"):
        assert a[key] == pytest.approx(0.0, abs=1e-12), key
    assert a["bvr"] == a["bvr_reference"] > 0.95
    assert a["suite_version"] == SUITE_VERSION and a["tolerances"]["bvr_tolerance"] == 0.25
    assert a["sun"] is None and "stability" in a["sun_note"]


def test_coverage_of_identical_sets_is_complete(fingerprint_report):
    a = fingerprint_report.aggregate
    assert a["cov_recall"] == 1.0 and a["cov_precision"] == 1.0
    assert fingerprint_report.reference["cov_recalled"].all()
    assert a["seed"] == 7 and a["tolerances"]["crystalnn_preset"] == "ops"


def test_coverage_counts_cutoffs_on_hand_made_fingerprints():
    ref_s, ref_c = np.zeros((2, 3)), np.array([[0.0, 0.0], [2.0, 2.0]])  # comp std 1 per column
    ref_s[1] = 1.0
    samples_s = np.array([[0.3, 0, 0], [0.5, 0, 0], [0, 0, 0], [np.nan, 0, 0]])
    samples_c = np.array([[0.0, 0.0], [0.0, 0.0], [9.0, 9.0], [0.0, 0.0]])
    covered, recalled = coverage(samples_s, samples_c, ref_s, ref_c, CoverageCutoffs(0.4, 1.0))
    # 0.3 <= 0.4 covered; 0.5 too far in structure; composition 8 std away; NaN never
    assert covered.tolist() == [True, False, False, False]
    assert recalled.tolist() == [True, False]


def test_wasserstein_and_kl_vanish_only_for_identical_sets(real):
    assert wasserstein(np.array([1.0, 2.0, 5.0]), np.array([5.0, 1.0, 2.0])) == 0.0
    assert wasserstein(np.array([0.0]), np.array([1.5])) == pytest.approx(1.5)
    p, q = element_frequencies(real[:20]), element_frequencies(real[20:40])
    assert p.sum() == pytest.approx(1.0)
    assert element_kl(p, p) == pytest.approx(0.0, abs=1e-12) and element_kl(p, q) > 0.1


# ---------------------------------------------------------------------- planted duplicates
def test_planted_duplicates_lower_uniqueness_exactly(real):
    base = real[:10]
    flags = uniqueness(base + planted(real), progress=False)
    assert flags.tolist() == [True] * 10 + [False] * 4
    report = evaluate(base + planted(real), base, with_fingerprints=False, progress=False)
    assert report.aggregate["uniqueness"] == pytest.approx(10 / 14)
    assert report.per_structure["duplicate_of"].tolist()[10:] == [3, 5, 7, 9]


def test_novelty_against_a_training_set(real):
    queries = planted(real) + real[40:43]
    assert novelty(queries, real[:10], progress=False).tolist() == [False] * 4 + [True] * 3
    scores = novelty_scores(queries, real[:10])
    assert np.all(scores[:4] < 0.02) and np.all(scores[4:] > 0.05) and np.all(scores <= 1)


def test_tanimoto_is_one_for_equal_vectors_and_zero_for_disjoint():
    t = tanimoto(np.array([[1.0, 2.0, 0.0], [0.0, 0.0, 3.0]]), np.array([[1.0, 2.0, 0.0]]))
    assert t[:, 0].tolist() == [1.0, 0.0]


def test_bucketed_decisions_equal_all_pairs_structure_matcher(real):
    """The oracle: plain StructureMatcher.fit on every pair, no keys, no pre-reduction."""
    pool = real + planted(real)
    fast, naive = first_matches(pool, progress=False), naive_first_matches(pool)
    assert (fast == naive).all()
    assert (naive != np.arange(len(pool))).sum() >= 4  # the oracle does find the copies
    queries = planted(real) + real[40:]
    fast, naive = first_matches(queries, real[:40], progress=False), naive_first_matches(
        queries, real[:40])
    assert (fast == naive).all() and (naive[:4] == [3, 5, 7, 9]).all()


@pytest.mark.slow
def test_process_pool_gives_the_same_decisions(real):
    pool = real + planted(real)
    assert (first_matches(pool, workers=2, progress=False)
            == first_matches(pool, progress=False)).all()


# ---------------------------------------------------------------------- hand-made failures
def test_imbalanced_and_overlapping_structures_are_invalid(real):
    imbalanced = Structure(Lattice.cubic(5.0), ["Na", "Cl", "Cl"],
                           [[0, 0, 0], [0.5, 0, 0], [0, 0.5, 0]])  # NaCl2, no overlaps
    overlapping = real[0].copy()
    overlapping.append(overlapping[0].specie, overlapping[0].coords + [0.2, 0, 0],
                       coords_are_cartesian=True)
    report = evaluate([real[1], imbalanced, overlapping], real[:3], with_fingerprints=False,
                      progress=False, unreadable=1)
    f = report.per_structure
    assert f["comp_valid"].tolist() == [True, False, True]
    assert f["struct_valid"].tolist() == [True, True, False]
    assert f["valid"].tolist() == [True, False, False]
    assert f["min_distance"][2] == pytest.approx(0.2, abs=1e-6)
    assert report.aggregate["structural_validity"] == pytest.approx(2 / 4)  # + 1 unreadable
    assert report.aggregate["validity"] == pytest.approx(1 / 4)


def test_bond_validation_rate_hand_made_and_real(real):
    rocksalt = Structure(Lattice.from_parameters(3.988, 3.988, 3.988, 60, 60, 60),
                         ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])  # a = 5.64 Å
    assert bond_ratios([rocksalt])[0] == pytest.approx(2.82 / (1.66 + 1.02), rel=1e-3)
    stretched = rocksalt.copy()
    stretched.scale_lattice(rocksalt.volume * 1.5**3)  # bonds 50 % longer
    squeezed = rocksalt.copy()
    squeezed.scale_lattice(rocksalt.volume * 0.7**3)  # bonds 30 % shorter
    assert bond_validation_rate([rocksalt, stretched, squeezed]).tolist() == [1.0, 0.0, 0.0]
    assert bond_validation_rate([rocksalt], tolerance=0.04)[0] == 0.0  # 5.2 % off
    assert BVR_TOLERANCE == 0.25 and np.mean(bond_validation_rate(real)) > 0.95


def test_shortest_relative_contact_is_the_pair_nearest_its_covalent_sum():
    # O-H 0.9 Å (0.9 / 0.97) is the shortest contact; Cs-O 2.0 Å (2.0 / 3.10) the tightest
    s = Structure(Lattice.cubic(10.0), ["O", "H", "Cs"],
                  [[0.5, 0.5, 0.5], [0.59, 0.5, 0.5], [0.5, 0.7, 0.5]])
    lone = Structure(Lattice.cubic(6.0), ["Si"], [[0, 0, 0]])  # own images 6 Å away
    empty = Structure(Lattice.cubic(0.0001), ["Si"], [[0, 0, 0]])  # no volume
    got = shortest_relative_contacts([s, lone, empty])
    assert got[0] == pytest.approx(2.0 / (2.44 + 0.66), rel=1e-6)
    assert got[1] == np.inf and np.isnan(got[2])
    assert shortest_relative_contacts([s], cutoff=1.5)[0] == pytest.approx(0.9 / 0.97, rel=1e-6)


# ---------------------------------------------------------------------- CSP
def scrambled(s: Structure, seed: int) -> Structure:
    """Same lattice and composition, atoms at random positions: another (wrong) structure."""
    frac = np.random.default_rng(seed).uniform(size=(len(s), 3))
    return Structure(s.lattice, s.species, frac)


def test_csp_with_k_samples_per_input(real):
    ref = [real[k] for k in (0, 1, 3, 4, 5)]  # 12-16 atoms: a scrambled cell cannot match
    samples = []
    for k, s in enumerate(ref):
        good = s.copy() if k != 2 else scrambled(s, 99)  # input 2: both samples wrong
        for slot, item in ((0, scrambled(s, k)), (1, good)):
            item.properties = {"input_index": k, "sample_index": slot}
            samples.append(item)
    samples = samples[::-1]  # order must not matter, the indices decide
    a = evaluate(samples, ref, task="csp", with_fingerprints=False, progress=False).aggregate
    assert a["csp"]["match_rate"] == pytest.approx(4 / 5)
    assert a["csp"]["samples_per_reference"] == 2
    with pytest.raises(ValueError, match="3 samples for 5 references"):
        evaluate(real[:3], ref, task="csp", with_fingerprints=False, progress=False)


# ---------------------------------------------------------------------- files and CLI
def test_report_files(fingerprint_report, tmp_path):
    out = write_report(fingerprint_report, tmp_path / "eval")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["suite_version"] == "1.0" and metrics["seed"] == 7
    assert metrics["tolerances"]["matcher"] == {"stol": 0.5, "ltol": 0.3, "angle_tol": 10.0,
                                                "primitive_cell": True, "scale": True,
                                                "attempt_supercell": False}
    assert metrics["tolerances"]["coverage"] == {"preset": "mp-20", "structure": 0.4,
                                                 "composition": 10.0}
    lines = (out / "per_structure.csv").read_text().strip().splitlines()
    assert len(lines) == 5 and lines[0].startswith("index,formula")
    text = (out / "report.md").read_text()
    assert "| Structural validity | 100.0 % |" in text and "| COV-R | 100.0 % |" in text
    for name in ("bond_lengths.png", "element_frequency.png", "lattice.png", "density.png",
                 "space_groups.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert f"]({name})" in text
    assert not (out / "energy.png").exists()  # no potential was asked for
    html = (out / "explorer.html").read_text()
    assert "Plotly.newPlot" in html and 'src="http' not in html  # offline: JS inside
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporaries left


def test_cli_evaluate(real, tmp_path, monkeypatch, capsys):
    path = write_structures(real[:6], tmp_path / "real.json")
    overlapping = real[0].copy()
    overlapping.append(overlapping[0].specie, overlapping[0].coords + [0.1, 0, 0],
                       coords_are_cartesian=True)
    samples = write_structures(real[:5] + [overlapping], tmp_path / "samples.json")
    code = main(["evaluate", str(samples), "--reference", str(path), "--out",
                 str(tmp_path / "out"), "--no-fingerprints", "--no-plots"])
    assert code == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["structural_validity"] == pytest.approx(5 / 6)  # read, then judged
    assert not list((tmp_path / "out").glob("*.png"))
    assert "validity: structural 83.3 %" in capsys.readouterr().out

    calls = []

    class FakeDataset:
        def structures(self, split=None):
            calls.append(split)
            return real[:6]

    monkeypatch.setattr("autoperi.data.datasets.load_dataset", lambda name, **kw: FakeDataset())
    assert main(["evaluate", str(path), "--reference", "perov-5:test", "--task", "csp",
                 "--no-fingerprints"]) == 0
    assert calls == ["test"] and "CSP match rate 100.0 %" in capsys.readouterr().out
    assert main(["evaluate", str(path), "--reference", "perov-5:tset"]) == 2
    assert main(["evaluate", str(tmp_path / "missing.cif"), "--reference", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("error: ") for line in err)
