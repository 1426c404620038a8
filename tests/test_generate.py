"""Generation API and CLI with a tiny model trained on real rows (seconds)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from autoperi.cli import main
from autoperi.config import Config, parse_targets
from autoperi.data.io import read_structures
from autoperi.generate import (
    clash_of,
    element_mask,
    predict_properties,
    predict_structures,
    sample,
)
from autoperi.geometry.clash import ClashFloor
from autoperi.testing import canonical_crystals
from autoperi.train import train

SAMPLE = Path(__file__).parent / "data" / "mp20_sample.csv"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gen")
    import os

    os.environ["AUTOPERI_CACHE"] = str(folder / "cache")
    config = Config().override({
        "data.dataset": str(SAMPLE), "data.properties": "band_gap",
        "data.energy_property": "formation_energy_per_atom", "model.hidden_dim": 16,
        "model.num_layers": 1, "train.batch_size": 16, "train.steps": 4,
        "train.warmup_steps": 1})
    return train(config, folder / "run", progress=False)


def test_parse_targets():
    assert parse_targets(["band_gap=1.35:1.65", "e=-0.5"]) == {
        "band_gap": (1.35, 1.65), "e": (-0.5, -0.5)}
    for bad in ("band_gap", "band_gap=a", "band_gap=2:1", "x=nan"):
        with pytest.raises(ValueError, match="target"):
            parse_targets([bad])


def test_element_mask(run):
    from autoperi.checkpoint import load_model

    model, _ = load_model(run)
    vocab = model.stats.vocab
    only = element_mask(model, ["O", "Na"])
    assert {vocab[k] for k in torch.nonzero(only).flatten().tolist()} == {8, 11}
    no_o = element_mask(model, exclude=["O"])
    assert not no_o[vocab.index(8)] and no_o.sum() == len(vocab) - 1
    assert element_mask(model) is None
    with pytest.raises(ValueError, match="vocabulary"):
        element_mask(model, ["Og"])
    with pytest.raises(ValueError, match="unknown element"):
        element_mask(model, ["Qq"])
    with pytest.raises(ValueError, match="no element"):
        element_mask(model, ["O"], exclude=["O"])


def test_sample_respects_constraints_and_seed(run):
    a = sample(run, num=6, steps=3, exclude=["O"], num_atoms=4, seed=1, progress=False)
    assert len(a) == 6 and all(len(s) == 4 for s in a)
    assert all("O" not in s.composition for s in a)
    assert all("predicted_band_gap" in s.properties for s in a)
    b = sample(run, num=6, steps=3, exclude=["O"], num_atoms=4, seed=1, progress=False)
    assert [s.composition for s in a] == [s.composition for s in b]
    assert all((x.frac_coords == y.frac_coords).all() for x, y in zip(a, b))
    with pytest.raises(ValueError, match="cannot aim"):
        sample(run, num=1, targets={"density": (1, 2)}, progress=False)


def test_clash_floors_default_to_the_models_and_can_be_overridden(run):
    import dataclasses

    from autoperi.checkpoint import load_model
    from autoperi.eval.validity import shortest_relative_contacts, structural_validity

    model, _ = load_model(run)
    plain = sample(model, num=8, steps=6, num_atoms=6, seed=2, progress=False)
    assert not structural_validity(plain, min_distance=1.4).all()  # the tiny model crowds
    model.config = dataclasses.replace(model.config, clash_distance=1.5)
    pushed = sample(model, num=8, steps=6, num_atoms=6, seed=2, progress=False)
    assert structural_validity(pushed, min_distance=1.4).all()
    off = sample(model, num=8, steps=6, num_atoms=6, seed=2, progress=False,
                 clash=ClashFloor())
    assert all((x.frac_coords == y.frac_coords).all() for x, y in zip(plain, off))
    # the relative floor: no pair closer than 0.6 x its two covalent radii
    model.config = dataclasses.replace(model.config, clash_distance=0.0, clash_scale=0.6)
    assert clash_of(model, scale=0.5) == ClashFloor(0.0, 0.5)
    relative = sample(model, num=8, steps=6, num_atoms=6, seed=2, progress=False)
    # five passes per step leave crowded cells of this tiny model within 2 % of the floor
    assert shortest_relative_contacts(relative).min() > 0.98 * 0.6
    assert shortest_relative_contacts(plain).min() < 0.3


def test_charge_neutral_decoding_gives_valid_compositions(run):
    from autoperi.eval.validity import compositional_validity

    free = sample(run, num=24, steps=3, seed=4, progress=False)
    neutral = sample(run, num=24, steps=3, seed=4, progress=False, commit_at=0.5,
                     charge_neutral=True)
    assert compositional_validity(neutral).mean() > compositional_validity(free).mean()
    # a 4-step model is nearly uniform over ~80 elements: the 256-assignment search can run dry
    assert [len(s) for s in neutral] == [len(s) for s in free]  # same atom counts drawn
    with pytest.raises(ValueError, match="commit_at"):
        sample(run, num=2, charge_neutral=True, progress=False)


def test_targets_change_the_samples(run):
    kw = dict(num=4, steps=3, seed=0, progress=False)
    low = sample(run, targets={"band_gap": (0.0, 0.0)}, guidance=3.0, **kw)
    high = sample(run, targets={"band_gap": (5.0, 5.0)}, guidance=3.0, **kw)
    assert any((x.frac_coords != y.frac_coords).any() for x, y in zip(low, high))


def test_csp_keeps_composition_and_order(run):
    inputs = ["NaCl", "Fe2O3", read_structures(SAMPLE)[0]]
    out = predict_structures(inputs, run, samples_per_input=2, steps=3, progress=False)
    assert [s.properties["input_index"] for s in out] == [0, 0, 1, 1, 2, 2]
    assert [s.properties["sample_index"] for s in out] == [0, 1] * 3
    assert out[2].composition.reduced_formula == "Fe2O3" and len(out[2]) == 5
    assert out[4].composition == inputs[2].composition
    with pytest.raises(ValueError, match="whole numbers"):
        predict_structures(["Fe0.5O"], run, steps=1, progress=False)


def test_property_heads_give_one_value_per_crystal(run):
    from autoperi.checkpoint import load_model
    from autoperi.data.crystal import CrystalBatch

    model, _ = load_model(run)
    batch = CrystalBatch.from_structures(read_structures(SAMPLE)[:5])
    pred = predict_properties(model, batch)
    assert set(pred) == {"band_gap", "formation_energy_per_atom"}
    assert pred["band_gap"].shape == (5,) and torch.isfinite(pred["band_gap"]).all()


def test_cli_sample_and_csp_write_files_and_settings(run, tmp_path, capsys):
    out = tmp_path / "gen.extxyz"
    code = main(["sample", "--model", str(run), "--num", "3", "--steps", "2",
                 "--out", str(out), "--target", "band_gap=1:2", "--exclude", "O"])
    assert code == 0
    assert len(read_structures(out)) == 3
    meta = json.loads(Path(f"{out}.meta.json").read_text())
    assert meta["targets"] == {"band_gap": [1.0, 2.0]} and meta["seed"] == 0
    assert meta["clash_distance"] == 0.0 and meta["clash_scale"] == 0.0  # model defaults
    assert "structures/s" in capsys.readouterr().out
    formulas = tmp_path / "f.txt"
    formulas.write_text("NaCl\n# a comment\nMgO\n")
    cif = tmp_path / "csp.cif"
    assert main(["csp", str(formulas), "--model", str(run), "--steps", "2",
                 "--out", str(cif)]) == 0
    back = read_structures(cif)
    assert [s.composition.reduced_formula for s in back] == ["NaCl", "MgO"]
    # The same structures through extxyz agree with the CIF.
    xyz = tmp_path / "csp.extxyz"
    assert main(["csp", str(formulas), "--model", str(run), "--steps", "2",
                 "--out", str(xyz)]) == 0
    for a, b in zip(back, read_structures(xyz)):
        assert a.lattice.abc == pytest.approx(b.lattice.abc, abs=1e-5)


def test_cli_generation_errors_are_one_line(run, tmp_path, capsys):
    assert main(["sample", "--model", str(run), "--out", str(tmp_path / "x.cif"),
                 "--target", "nope=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:")
    assert main(["sample", "--model", str(tmp_path / "missing"), "--out",
                 str(tmp_path / "x.cif")]) == 2


@pytest.mark.parametrize("name", ["mp-20", "perov-5", "carbon-24"])
def test_shipped_models_load_and_generate_offline(name):
    from autoperi.checkpoint import load_model

    model, config = load_model(name)
    assert config.data.dataset == name
    if config.flow.generate_types:
        out = sample(model, num=2, steps=2, progress=False)
    else:  # Carbon-24 is a structure-prediction model
        out = predict_structures(["C8"], model, steps=2, progress=False)
    assert all(len(s) > 0 and s.lattice.volume > 0 for s in out)


def test_relax_generated_relaxes_in_order_and_keeps_what_it_cannot_relax():
    pytest.importorskip("chgnet")
    from pymatgen.core import Lattice, Structure

    from autoperi.generate import relax_generated

    silicon = Structure.from_spacegroup("Fd-3m", Lattice.cubic(5.43), ["Si"],
                                        [[0, 0, 0]]).get_primitive_structure()
    squeezed = silicon.copy()
    squeezed.scale_lattice(silicon.volume * 0.88)
    squeezed.properties = {"input_index": 0}
    overlapping = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.05, 0, 0]])
    overlapping.properties = {"input_index": 1}
    out = relax_generated([squeezed, overlapping], fmax=0.05, steps=300, progress=False)
    assert [s.properties["input_index"] for s in out] == [0, 1]
    got = out[0].properties
    assert got["relax_converged"] and got["energy_per_atom"] < got["energy_per_atom_generated"]
    assert out[0].volume / squeezed.volume > 1.1  # expands back towards a = 5.45 Å
    assert "relax_problem" not in got
    assert "0.2" in out[1].properties["relax_problem"]  # the 0.20 Å contact, named
    assert np.allclose(out[1].frac_coords, overlapping.frac_coords)  # kept as generated
    assert "energy_per_atom" not in out[1].properties
    # under 50 GPa silicon stays denser than at 0 (diamond Si's bulk modulus is ~100 GPa)
    pressed = relax_generated([squeezed], fmax=0.05, steps=300, progress=False, pressure=50)
    assert pressed[0].volume < 0.9 * out[0].volume


def test_cli_csp_relax_writes_energies_and_records_the_relaxation(run, tmp_path, capsys,
                                                                 monkeypatch):
    pytest.importorskip("chgnet")
    formulas = tmp_path / "f.txt"
    formulas.write_text("NaCl\nMgO\n")
    out = tmp_path / "csp.extxyz"
    # a relax setting without --relax would do nothing: refused before sampling
    assert main(["csp", str(formulas), "--model", str(run), "--steps", "2", "--out", str(out),
                 "--relax-steps", "2"]) == 2
    assert "--relax-steps need --relax" in capsys.readouterr().err and not out.exists()
    assert main(["csp", str(formulas), "--model", str(run), "--steps", "2", "--out", str(out),
                 "--relax-pressure", "10"]) == 2
    assert "--relax-pressure need --relax" in capsys.readouterr().err and not out.exists()
    import autoperi.generate

    calls = []  # what the CLI hands the relaxation, not only what it records
    relax_generated = autoperi.generate.relax_generated
    monkeypatch.setattr(autoperi.generate, "relax_generated",
                        lambda *a, **k: calls.append((a, k)) or relax_generated(*a, **k))
    assert main(["csp", str(formulas), "--model", str(run), "--steps", "2", "--out", str(out),
                 "--relax", "--relax-steps", "2", "--relax-pressure", "10"]) == 0
    assert calls[0][0][2] == 2 and calls[0][1]["pressure"] == 10
    meta = json.loads(Path(f"{out}.meta.json").read_text())
    assert meta["relax"]["max_steps"] == 2 and meta["relax"]["potential"] == "CHGNet"
    assert meta["relax"]["pressure_gpa"] == 10
    written = read_structures(out).structures
    assert len(written) == 2
    relaxed = [s for s in written if "energy_per_atom" in s.properties]
    assert len(relaxed) + meta["relax"]["problems"] == 2
    assert meta["relax"]["converged"] == sum(bool(s.properties["relax_converged"])
                                             for s in relaxed)


def test_symmetrize_generated_snaps_noise_away_and_keeps_what_it_cannot_snap():
    from pymatgen.analysis.structure_matcher import StructureMatcher
    from pymatgen.core import Lattice, Structure
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    from autoperi.generate import symmetrize_generated

    # conventional cell: no free parameter, so snapping can remove all the noise
    salt = canonical_crystals()["rocksalt_NaCl"]
    noise = np.random.default_rng(0).normal(0, 0.02, (len(salt), 3))
    noisy = Structure(salt.lattice, salt.species, salt.cart_coords + noise,
                      coords_are_cartesian=True)
    noisy.properties = {"input_index": 0}
    on_top = Structure(Lattice.cubic(4.0), ["Na", "Na"], [[0, 0, 0], [0, 0, 0]])
    close = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.05, 0, 0]])  # 0.2 Å
    broken = Structure(Lattice.cubic(4.0), ["Na"], [[np.nan, 0, 0]])
    # spglib compares atoms with their images: the tolerance must cover twice the noise
    snapped, *kept = symmetrize_generated([noisy, on_top, close, broken], symprec=0.2)
    assert SpacegroupAnalyzer(noisy, symprec=0.01).get_space_group_number() == 1
    assert snapped.properties["spacegroup"] == 225 and snapped.properties["input_index"] == 0
    # exact symmetry now, the same atoms in the same order and the same cell
    assert SpacegroupAnalyzer(snapped, symprec=1e-5).get_space_group_number() == 225
    assert [site.specie for site in snapped] == [site.specie for site in noisy]
    assert np.allclose(snapped.lattice.abc, 5.64) and np.allclose(snapped.lattice.angles, 90)
    # the ideal crystal again, up to a translation: each atom moved by its noise less the
    # mean noise, the largest of which is the recorded shift
    matcher = StructureMatcher(primitive_cell=False, scale=False)
    assert matcher.get_rms_dist(noisy, salt)[0] > 0.01
    assert matcher.get_rms_dist(snapped, salt)[0] < 1e-6
    expected = np.linalg.norm(noise - noise.mean(axis=0), axis=1).max()
    assert snapped.properties["symmetrize_max_shift"] == pytest.approx(expected, abs=1e-6)
    # a tolerance below the noise finds nothing to snap to
    tight = symmetrize_generated([noisy], symprec=1e-4)[0]
    assert tight.properties["spacegroup"] == 1
    assert tight.properties["symmetrize_max_shift"] < 1e-6
    # kept as generated, each with its reason
    problems = [s.properties["symmetrize_problem"] for s in kept]
    assert "too close" in problems[0]  # spglib's own
    assert "closer than 0.5" in problems[1]  # ours: spglib takes 0.2 Å at symprec 0.2
    assert "non-finite" in problems[2]  # spglib would crash the process
    assert np.allclose(kept[1].frac_coords, close.frac_coords)
    assert all("spacegroup" not in s.properties for s in kept)


def test_symmetrize_generated_is_self_consistent_on_strained_noisy_cells():
    """A strained cell can show the cell one group and the atoms another; what comes out
    must have, exactly, the group spglib finds at the tolerance it was snapped at."""
    import spglib
    from pymatgen.core import Lattice, Structure

    from autoperi.generate import symmetrize_generated

    # conventional cell: no free parameter, so snapping can remove all the noise
    salt = canonical_crystals()["rocksalt_NaCl"]
    rng = np.random.default_rng(0)
    crystals = []
    for _ in range(100):
        lattice = Lattice(salt.lattice.matrix @ (np.eye(3) + rng.normal(0, 0.03, (3, 3))))
        ideal = Structure(lattice, salt.species, salt.frac_coords)
        crystals.append(Structure(lattice, salt.species,
                                  ideal.cart_coords + rng.normal(0, 0.03, (len(salt), 3)),
                                  coords_are_cartesian=True))
    out = symmetrize_generated(crystals, symprec=0.2)
    snapped = [s for s in out if "spacegroup" in s.properties]
    assert len(snapped) >= 95
    groups = {s.properties["spacegroup"] for s in snapped}
    assert len(groups) > 3  # the strains break the cubic symmetry in different ways
    for s in snapped:  # spglib with its own angle tolerance, as ASE calls it
        cell = (s.lattice.matrix, s.frac_coords, s.atomic_numbers)
        exact = spglib.get_symmetry_dataset(cell, symprec=1e-5).number
        assert exact == s.properties["spacegroup"]
        assert spglib.get_symmetry_dataset(cell, symprec=0.2).number == exact


def test_cli_sample_symmetrize_records_the_tolerance(run, tmp_path, capsys):
    out = tmp_path / "s.extxyz"
    with pytest.raises(SystemExit):  # argparse refuses it before any sampling
        main(["sample", "--model", str(run), "--num", "3", "--steps", "2", "--out", str(out),
              "--symmetrize", "-1"])
    assert "positive tolerance" in capsys.readouterr().err and not out.exists()
    assert main(["sample", "--model", str(run), "--num", "3", "--steps", "2", "--out",
                 str(out), "--symmetrize"]) == 0
    meta = json.loads(Path(f"{out}.meta.json").read_text())
    assert meta["symmetrize"]["symprec"] == 0.1  # the flag alone: the default tolerance
    assert main(["sample", "--model", str(run), "--num", "3", "--steps", "2", "--out",
                 str(out), "--symmetrize", "0.3"]) == 0
    meta = json.loads(Path(f"{out}.meta.json").read_text())
    assert meta["symmetrize"]["symprec"] == 0.3 and meta["structures"] == 3
    read = read_structures(out)  # the reader may refuse a tiny model's crowded crystal
    assert len(read.structures) + len(read.problems) == 3
    snapped = [s for s in read.structures if "spacegroup" in s.properties]
    kept = [s for s in read.structures if "symmetrize_problem" in s.properties]
    assert len(snapped) + len(kept) == len(read.structures)
    assert len(kept) <= meta["symmetrize"]["problems"] <= len(kept) + len(read.problems)
    assert snapped and all(1 <= s.properties["spacegroup"] <= 230 for s in snapped)
