"""Targeted-generation metrics, the Property Explorer and stability (E_hull, S.U.N.)."""

import json
from pathlib import Path

import numpy as np
import pytest
from pymatgen.core import Structure

from autoperi.cli import main
from autoperi.data.io import read_structures, write_structures
from autoperi.eval.explorer import pca_map
from autoperi.eval.match import CDVAE
from autoperi.eval.predictor import shipped_predictors
from autoperi.eval.suite import evaluate
from autoperi.eval.targets import (
    distance_to_window,
    evaluate_targets,
    ranking,
    recall_at,
    top_reference,
)

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def real() -> list[Structure]:
    return read_structures(DATA / "mp20_sample.csv").structures  # with band_gap etc.


class Oracle:
    """A 'predictor' that returns fixed values per structure (by identity)."""

    def __init__(self, structures, values):
        self.values = {id(s): v for s, v in zip(structures, values, strict=True)}

    def predict(self, structures):
        return np.array([self.values[id(s)] for s in structures])


def test_window_distance_and_ranking():
    values = [0.5, 1.4, 1.7, np.nan, 1.5, 3.0]
    assert np.allclose(distance_to_window(values, 1.35, 1.65)[[0, 1, 2, 4, 5]],
                       [0.85, 0.0, 0.05, 0.0, 1.35])
    # inside first (centre 1.5 before 1.4), then by distance, NaN last
    assert ranking(values, 1.35, 1.65).tolist() == [4, 1, 2, 0, 5, 3]
    own = np.array([1.5, 1.5, 9.0, 9.0])
    truth = np.array([1.5, 0.0, 1.5, 1.5])
    assert recall_at(own, truth, 1.35, 1.65, top=2) == 0.5  # own picks 0 and 1; 1 misses
    assert np.isnan(recall_at([np.nan] * 4, truth, 1.35, 1.65))
    reference = np.arange(100) / 10.0  # 0.0 .. 9.9
    assert sorted(top_reference(reference, 5.0, 5.0, percent=3).tolist()) == [49, 50, 51]
    assert len(top_reference(reference, 2.0, 4.0, percent=3)) == 21  # whole window: 2.0..4.0


def test_evaluate_targets_with_oracle_predictor(real):
    reference = real[:30]
    gaps = np.array([s.properties["band_gap"] for s in reference])
    samples = [Structure(s.lattice, s.species, s.frac_coords,
                         properties={"predicted_band_gap": gaps[k]})  # own head = truth
               for k, s in enumerate(real[:10])]
    truth = Oracle(samples, gaps[:10])
    frame, summary = evaluate_targets(samples, reference, {"band_gap": (1.0, 3.0)},
                                      {"band_gap": truth}, CDVAE, progress=False)
    hits = (gaps[:10] >= 1.0) & (gaps[:10] <= 3.0)
    assert frame["band_gap_hit"].tolist() == hits.tolist()
    s = summary["band_gap"]
    assert s["hit_rate"] == pytest.approx(hits.mean()) and s["own_hit_rate"] == s["hit_rate"]
    assert s["mae"] == pytest.approx(distance_to_window(gaps[:10], 1.0, 3.0).mean())
    assert s["recall@100"] == pytest.approx(hits.mean())  # top 100 of 10 = all of them
    # rediscovery: of the reference's best 5 % (or window), those among the samples are found
    best = top_reference(gaps, 1.0, 3.0, 5.0)
    assert s["rediscovery"]["reference_crystals"] == len(best)
    assert s["rediscovery"]["rediscovered"] == pytest.approx(np.mean(best < 10))
    with pytest.raises(ValueError, match="no independent predictor"):
        evaluate_targets(samples, reference, {"heat": (0, 1)}, {}, CDVAE, progress=False)


def test_pca_map_pads_to_three_axes():
    xr, xs, explained = pca_map(np.array([[0.0, 1.0], [1.0, 0.0]]), np.zeros((1, 2)))
    assert xr.shape == (2, 3) and xs.shape == (1, 3) and len(explained) == 3
    assert np.all(xr[:, 2] == 0) and np.allclose(xr[:, 1], 0) and explained[0] == pytest.approx(1)


def test_pca_map_is_anchored_on_the_reference():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(200, 6)) * [5, 3, 1, 1, 1, 1]
    samples = np.vstack([reference[:3], np.full((1, 6), np.nan)])
    xr, xs, explained = pca_map(reference, samples)
    assert np.allclose(xr.mean(0), 0, atol=1e-12)
    variances = xr.var(0)
    assert np.all(np.diff(variances) <= 1e-12) and explained.sum() <= 1 + 1e-12
    assert np.allclose(xs[:3], xr[:3]) and np.isnan(xs[3]).all()


def test_suite_with_targets_writes_property_plot_and_explorer(real, tmp_path):
    predictors = shipped_predictors("mp-20")
    assert set(predictors) == {"band_gap", "formation_energy_per_atom"}
    from autoperi.eval.report import write_report

    report = evaluate(real[:12], real, targets={"band_gap": (1.35, 1.65)},
                      predictors=predictors, with_fingerprints=False, progress=False)
    t = report.aggregate["targets"]["band_gap"]
    assert 0 <= t["hit_rate"] <= 1 and t["own_hit_rate"] is None  # data carry no own head
    assert np.isnan(t["recall@100"])
    assert t["rediscovery"]["rediscovered"] > 0  # samples are reference crystals
    out = write_report(report, tmp_path / "r")
    assert (out / "property_band_gap.png").read_bytes()[:4] == b"\x89PNG"
    text = (out / "report.md").read_text()
    assert "## Target band_gap in [1.35, 1.65]" in text
    tolerances = text.split("## Tolerances")[1]
    assert "| symprec |" in tolerances and "hit_rate" not in tolerances
    assert "band_gap" in (out / "explorer.html").read_text()


def test_cli_evaluate_target_needs_a_predictor(real, tmp_path, capsys):
    path = write_structures(real[:6], tmp_path / "s.json")
    code = main(["evaluate", str(path), "--reference", str(path), "--no-fingerprints",
                 "--target", "band_gap=1:2"])
    assert code == 2 and "no independent predictor" in capsys.readouterr().err
    folder = Path(__file__).parents[1] / "src/autoperi/pretrained/predictors/mp-20/band_gap"
    code = main(["evaluate", str(path), "--reference", str(path), "--no-fingerprints",
                 "--target", "band_gap=1:2", "--predictor", f"band_gap={folder}",
                 "--out", str(tmp_path / "o"), "--no-plots"])
    assert code == 0
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert metrics["targets"]["band_gap"]["low"] == 1.0


# ----------------------------------------------------------------------- stability
chgnet = pytest.importorskip("chgnet")


def test_elemental_corners_match_known_chgnet_ground_states(tmp_path):
    from autoperi.eval.energy import relax
    from autoperi.eval.stability import element_prototypes, elemental_entries

    assert len(element_prototypes("O")) == 1 and len(element_prototypes("O")[0]) == 2
    assert len(element_prototypes("Cu")) == 4  # fcc, bcc, hcp, reference (fcc)
    chlorine = element_prototypes("Cl")  # Cl2 in a box, then fcc, bcc, hcp (no ASE state)
    assert len(chlorine) == 4 and chlorine[0].volume == pytest.approx(1000)
    relaxed = relax(chlorine, progress=False).e_relaxed
    assert relaxed[0] < min(relaxed[1:]) - 0.2  # the molecule wins by a wide margin
    entries = {e.composition.reduced_formula: e.energy_per_atom
               for e in elemental_entries(["Cu", "O"], cache_dir=tmp_path, progress=False)}
    # CHGNet is fitted to Materials Project energies: fcc Cu -4.10, O2 -4.95 eV/atom there
    assert entries["Cu"] == pytest.approx(-4.10, abs=0.1)
    assert entries["O2"] == pytest.approx(-4.95, abs=0.3)
    cached = json.loads(next(tmp_path.glob("elements-v2-*.json")).read_text())
    assert set(cached) == {"Cu", "O"}


def test_evaluate_with_mlip_gives_hull_energies_and_sun(real, tmp_path):
    from autoperi.eval.stability import covered_systems

    small = [s for s in real if len(s) <= 8][:12]
    own = evaluate(small[:6], small[:6], mlip="chgnet", with_fingerprints=False,
                   progress=False, cache_dir=tmp_path, explorer=False)
    # every sample is one of the hull's own entries: none can lie below the hull
    assert (own.per_structure["e_above_hull"] >= -1e-6).all()
    assert own.per_structure["on_hull"].any() and own.aggregate["sun"] == 0.0  # not novel
    # samples disjoint from the hull / novelty set: S.U.N. by hand
    report = evaluate(small[6:], small[6:], train=small[:6], mlip="chgnet",
                      with_fingerprints=False, progress=False, cache_dir=tmp_path,
                      explorer=False)
    f, a = report.per_structure, report.aggregate
    assert f["novel"].all() and a["energy"]["potential"].startswith("CHGNet")
    assert a["sun"] == pytest.approx((f["metastable"] & f["unique"] & f["novel"]).mean())
    assert a["sun_strict"] == pytest.approx((f["on_hull"] & f["unique"] & f["novel"]).mean())
    compounds = [set(map(str, s.composition.elements)) for s in small[:6]]
    by_hand = [any(c <= set(map(str, s.composition.elements)) for c in compounds
                   if len(c) > 1) for s in small[6:]]
    assert f["hull_covered"].tolist() == by_hand
    assert a["sun_covered"] == pytest.approx((f["sun_stable"] & f["hull_covered"]
                                              & f["unique"] & f["novel"]).mean())
    assert covered_systems(small[:1], []).tolist() == [False]
    assert f["e_above_hull"].notna().all()  # corners exist for the samples' own elements


def test_relaxed_evaluation_with_phonon_check(tmp_path):
    from autoperi.testing import canonical_crystals

    crystals = canonical_crystals()
    samples = [crystals["fcc_Cu"], crystals["rocksalt_NaCl"]]
    report = evaluate(samples, samples, mlip="chgnet", relax=True, phonon_checks=1,
                      with_fingerprints=False, progress=False, cache_dir=tmp_path,
                      explorer=False)
    frame, energy = report.per_structure, report.aggregate["energy"]
    assert frame["relax_converged"].all() and (frame["relaxation_energy"] >= -1e-6).all()
    assert energy["phonons_checked"] == 1 and energy["dynamically_stable"] == 1.0
    assert frame["lowest_frequency"][0] > 0.0 and np.isnan(frame["lowest_frequency"][1])
    # relaxed copies of the hull's own references: at most a few meV/atom below it
    assert (frame["e_above_hull"] >= -0.01).all()
    assert main(["evaluate", "x", "--reference", "x", "--phonons", "2"]) == 2
