"""Structure I/O: every bad input is reported (file + block/row/frame + reason) and skipped,
good items around it are read, every format round-trips, writes are atomic."""

from __future__ import annotations

import gzip
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pymatgen.core import Composition, Lattice, Structure

from autoperi.data import io as sio
from autoperi.data.checks import Limits
from autoperi.data.io import Problem, ReadError, read_structures, write_structures

DATA = Path(__file__).parent / "data"
BAD = DATA / "bad"
PEROV = DATA / "perov_5_val_head5.csv"
MP20 = DATA / "mp_20_train_head5.csv.gz"
CARBON = DATA / "carbon_24_val_head5.csv"
NUMERIC_MP20 = ("formation_energy_per_atom", "band_gap", "e_above_hull", "spacegroup.number")


def formulas(result) -> list[str]:
    return [s.composition.reduced_formula for s in result]


def only_problem(result) -> Problem:
    assert len(result.problems) == 1, result.problems
    return result.problems[0]


# ====================================================================== bad files, one by one
# (file, expected location, words the reason must contain)
SINGLE_BAD = [
    ("malformed_syntax.cif", "block 0 'data_broken'", ["invalid CIF"]),
    ("partial_occupancy.cif", "block 0 'data_FeCoAl_disordered'",
     ["partial occupancy", "Fe:0.5", "Co:0.5"]),
    ("label_not_element.cif", "block 0 'data_XxCl'", ["Xx", "not a chemical element"]),
    ("symbol_not_element.cif", "block 0 'data_QqCl'", ["Qq", "not a chemical element"]),
    ("nan_coords.poscar", "", ["site(s) [1]", "NaN"]),
    ("inf_coords.extxyz", "frame 0 (line 1)", ["site(s) [1]", "inf"]),
    ("zero_volume.poscar", "", ["zero or negative volume", "det = 0"]),
    ("negative_volume.poscar", "", ["zero or negative volume", "det = -32.77"]),
    ("overlapping_atoms.cif", "block 0 'data_NaCl_overlap'", ["overlapping", "0.100 Å"]),
    ("isolated_atom.poscar", "", ["isolated", "atom(s) [0]"]),
    ("empty.cif", "", ["empty"]),
    ("binary.cif", "", ["binary"]),
    ("no_cif_column.csv", "", ["no 'cif' column", "structure"]),
    ("not_gzip.csv.gz", "", ["not a valid gzip"]),
]


@pytest.mark.parametrize("name, location, words", SINGLE_BAD, ids=[c[0] for c in SINGLE_BAD])
def test_bad_file_is_skipped_and_reported(name, location, words):
    path = BAD / name
    result = read_structures(path)
    assert len(result) == 0
    problem = only_problem(result)
    assert problem.skipped
    assert problem.source == str(path)
    assert problem.location == location
    for word in words:
        assert word in problem.reason, (word, problem.reason)
    assert str(problem).startswith(f"{path}: ")
    assert str(problem).endswith("[skipped]")
    assert result.skipped == [problem]


@pytest.mark.parametrize("name, location, words", SINGLE_BAD, ids=[c[0] for c in SINGLE_BAD])
def test_bad_file_raises_in_strict_mode(name, location, words):
    with pytest.raises(ReadError, match=re.escape(words[0])) as raised:
        read_structures(BAD / name, strict=True)
    assert str(raised.value).startswith(f"{BAD / name}: {location}")


def test_cif_uncertainties_are_accepted_as_values():
    result = read_structures(BAD / "uncertainties.cif")
    assert result.problems == []
    (s,) = result
    np.testing.assert_allclose(s.lattice.abc, (3.2, 3.2, 3.2), rtol=0, atol=1e-12)
    assert [str(sp) for sp in s.species] == ["Na", "Cl"]
    np.testing.assert_allclose(s.frac_coords, [[0, 0, 0], [0.707, 0.5, 0.5]], rtol=0, atol=1e-12)


def test_isolation_and_overlap_follow_the_limits():
    """The same files pass once the thresholds allow them: the verdicts come from Limits."""
    lonely = read_structures(BAD / "isolated_atom.poscar", limits=Limits(isolation_distance=31.0))
    assert (len(lonely), lonely.problems) == (1, [])
    close = read_structures(BAD / "overlapping_atoms.cif", limits=Limits(min_distance=0.05))
    assert (len(close), close.problems) == (1, [])


def test_more_atoms_than_the_cap_are_skipped():
    capped = read_structures(PEROV, limits=Limits(max_atoms=4))
    assert len(capped) == 0
    assert [p.location for p in capped.problems] == [f"row {k}" for k in range(5)]
    assert all(p.skipped and "5 atoms exceed the cap of 4" in p.reason for p in capped.problems)
    assert len(read_structures(PEROV, limits=Limits(max_atoms=5))) == 5


def test_duplicate_blocks_are_kept_and_reported():
    result = read_structures(BAD / "duplicates.cif")
    assert formulas(result) == ["NaCl", "CsCl", "NaCl"]
    problem = only_problem(result)
    assert not problem.skipped
    assert result.skipped == []
    assert problem.location == "block 2 'data_NaCl_again'"
    assert "duplicate" in problem.reason and "block 0 'data_NaCl_good'" in problem.reason
    assert str(problem).endswith("[kept]")


def test_duplicate_csv_rows_are_kept_and_reported():
    result = read_structures(BAD / "duplicates.csv")
    assert formulas(result) == ["NaCl", "CsCl", "NaCl"]
    assert [s.properties["material_id"] for s in result] == ["first", "other", "copy"]
    problem = only_problem(result)
    assert (problem.skipped, problem.location) == (False, "row 2 (copy)")
    assert "duplicate" in problem.reason and "row 0 (first)" in problem.reason


def test_one_bad_block_among_good_blocks():
    path = BAD / "mixed_blocks.cif"
    result = read_structures(path)
    assert formulas(result) == ["NaCl", "CsCl", "KBr"]
    problem = only_problem(result)
    assert (problem.source, problem.location) == (str(path), "block 1 'data_NaCl_overlap'")
    assert problem.skipped and "overlapping" in problem.reason
    with pytest.raises(ReadError, match="block 1 'data_NaCl_overlap'"):
        read_structures(path, strict=True)


def test_one_bad_frame_among_good_frames():
    path = BAD / "mixed_frames.extxyz"
    result = read_structures(path)
    assert formulas(result) == ["NaCl", "CsCl", "KBr"]
    assert [s.properties["energy"] for s in result] == [-1.5, -3.5, -4.5]
    np.testing.assert_allclose(result[1].lattice.abc, (4.12,) * 3, rtol=0, atol=1e-12)
    np.testing.assert_allclose(result[1].frac_coords, [[0, 0, 0], [0.5, 0.5, 0.5]], atol=1e-12)
    problem = only_problem(result)
    assert (problem.source, problem.location) == (str(path), "frame 1 (line 5)")
    assert problem.skipped and "NaN" in problem.reason


def test_csv_bad_cells_among_good_rows():
    path = BAD / "mixed_rows.csv"
    result = read_structures(path)
    assert formulas(result) == ["NaCl", "CsCl", "KBr"]
    assert [s.properties["material_id"] for s in result] == ["good-0", "good-2", "good-4"]
    assert [s.properties["energy"] for s in result] == [-1.5, -3.5, -5.5]
    assert [(p.source, p.location, p.skipped) for p in result.problems] == [
        (str(path), "row 1 (bad-1)", True), (str(path), "row 3 (overlap-3)", True)]
    assert "invalid CIF" in result.problems[0].reason
    assert "overlapping" in result.problems[1].reason


def test_zip_with_one_bad_member():
    path = BAD / "mixed_members.zip"
    result = read_structures(path)
    assert formulas(result) == ["NaCl", "CsCl"]
    problem = only_problem(result)  # notes.txt is not a structure file: ignored, not a problem
    assert problem.source == f"{path}::b_overlap.cif"
    assert problem.location == "block 0 'data_NaCl_overlap'"
    assert problem.skipped and "overlapping" in problem.reason


def test_zip_member_that_is_not_gzip_is_reported(tmp_path):
    path = tmp_path / "members.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("a.cif.gz", (BAD / "uncertainties.cif").read_text())  # not compressed
        archive.writestr("b.cif.gz", gzip.compress((BAD / "uncertainties.cif").read_bytes()))
    result = read_structures(path)
    assert formulas(result) == ["NaCl"]
    problem = only_problem(result)
    assert problem.source == f"{path}::a.cif.gz" and "not a valid gzip" in problem.reason


def test_files_over_the_size_cap_are_refused(tmp_path):
    path = BAD / "uncertainties.cif"
    size = path.stat().st_size
    result = read_structures(path, limits=Limits(max_file_bytes=size - 1))
    assert len(result) == 0
    problem = only_problem(result)
    assert problem.source == str(path) and problem.skipped
    assert f"{size} bytes, above the cap of {size - 1}" in problem.reason
    assert len(read_structures(path, limits=Limits(max_file_bytes=size))) == 1
    # a zip member that inflates past the cap is refused too (the archive itself is small)
    padded = "#" + " padding" * 2000 + "\n" + path.read_text()
    archive_path = tmp_path / "big.zip"
    with zipfile.ZipFile(archive_path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("big.cif", padded)
    assert archive_path.stat().st_size < 2000 < len(padded)
    member = read_structures(archive_path, limits=Limits(max_file_bytes=2000))
    assert len(member) == 0
    assert only_problem(member).source == f"{archive_path}::big.cif"
    assert "above the cap" in member.problems[0].reason


def test_folder_with_one_bad_file(tmp_path):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(BAD / "uncertainties.cif", folder / "a.cif")
    shutil.copy(PEROV, folder / "sub" / "perov.csv")
    shutil.copy(BAD / "mixed_frames.extxyz", folder / "frames.extxyz")
    shutil.copy(BAD / "overlapping_atoms.cif", folder / "bad.cif")
    (folder / "notes.txt").write_text("not a structure\n")
    result = read_structures(folder)
    # files in sorted order: a.cif, bad.cif, frames.extxyz, sub/perov.csv
    assert len(result) == 1 + 3 + 5
    skipped = result.skipped
    assert len(skipped) == 2  # bad.cif, and frame 1 of frames.extxyz
    assert (skipped[0].source, skipped[0].location) == (
        str(folder / "bad.cif"), "block 0 'data_NaCl_overlap'")
    assert "overlapping" in skipped[0].reason
    assert (skipped[1].source, skipped[1].location) == (
        str(folder / "frames.extxyz"), "frame 1 (line 5)")
    # a.cif (Cl at x = 0.707) and frame 0 (Cl at x = 0.5) differ: no duplicate reported
    assert [p for p in result.problems if not p.skipped] == []
    out = write_structures(result, tmp_path / "out.extxyz")
    back = read_structures(out)
    assert formulas(back) == formulas(result) and back.problems == []


def test_missing_path_and_unknown_format():
    with pytest.raises(ReadError, match="no such file"):
        read_structures(DATA / "does_not_exist.cif")
    with pytest.raises(ReadError, match="cannot tell the format"):
        read_structures(BAD / "README.md")
    # an explicit format overrides the name
    assert formulas(read_structures(BAD / "uncertainties.cif", format="cif")) == ["NaCl"]


# ====================================================================== real CDVAE rows
def _expected(path: Path) -> pd.DataFrame:
    return pd.read_csv(path)


def test_real_perov5_rows():
    result = read_structures(PEROV)
    table = _expected(PEROV)
    assert len(result) == len(table) == 5 and result.problems == []
    for s, (_, row) in zip(result, table.iterrows(), strict=True):
        assert len(s) == 5
        assert s.composition == Composition(row["formula"])
        for key in ("heat_all", "heat_ref", "dir_gap", "ind_gap"):
            assert s.properties[key] == pytest.approx(row[key], abs=1e-12)
        assert s.properties["material_id"] == row["material_id"]
        assert "Unnamed: 0" not in s.properties and "cif" not in s.properties
    assert result[0].properties["heat_ref"] == pytest.approx(2.709153)
    assert result[0].composition.reduced_formula == "CdCuN3"


def test_real_mp20_rows_from_gzip():
    result = read_structures(MP20)
    table = _expected(MP20)
    assert len(result) == len(table) == 5 and result.problems == []
    assert len(result[0]) == 12
    assert result[0].properties["material_id"] == "mp-1221227"
    assert result[0].properties["formation_energy_per_atom"] == pytest.approx(-1.637460082715517)
    for s, (_, row) in zip(result, table.iterrows(), strict=True):
        assert s.composition.reduced_formula == Composition(row["pretty_formula"]).reduced_formula
        for key in NUMERIC_MP20:
            assert s.properties[key] == pytest.approx(row[key], abs=1e-12)


def test_real_carbon24_rows():
    result = read_structures(CARBON)
    assert len(result) == 5 and result.problems == []
    assert all(s.composition.elements == [Composition("C").elements[0]] for s in result)
    assert all(6 <= len(s) <= 24 for s in result)
    assert result[0].properties["energy_per_atom"] == pytest.approx(-154.223695)
    assert result[0].properties["material_id"] == "C-148264-7891-51"


# ====================================================================== round trips
@pytest.fixture(scope="module")
def mp20() -> list[Structure]:
    return list(read_structures(MP20))


def assert_same(original, back, properties=True):
    assert len(back) == len(original)
    for a, b in zip(original, back, strict=True):
        np.testing.assert_allclose(b.lattice.matrix, a.lattice.matrix, rtol=0, atol=1e-6)
        assert [str(x) for x in b.species] == [str(x) for x in a.species]
        np.testing.assert_allclose(b.frac_coords, a.frac_coords, rtol=0, atol=1e-6)
        if properties:
            for key in NUMERIC_MP20:
                assert b.properties[key] == pytest.approx(a.properties[key], rel=0, abs=1e-12)
            assert b.properties["material_id"] == a.properties["material_id"]


@pytest.mark.parametrize("name", ["out.cif", "out.cif.gz", "out.extxyz", "out.json", "out.csv",
                                  "out.csv.gz", "out.parquet", "out.zip", "out_folder"])
def test_round_trip(tmp_path, mp20, name):
    path = write_structures(mp20, tmp_path / name)
    assert path == tmp_path / name and path.exists()
    back = read_structures(path)
    assert back.problems == []
    assert_same(mp20, back)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no temporary left behind


def test_round_trip_cif_tags_are_in_their_own_block(tmp_path, mp20):
    """Each block carries its own `_autoperi_` tags (not the next block's)."""
    path = write_structures(mp20[:2], tmp_path / "two.cif")
    text = path.read_text()
    second = text.index("data_1_")
    assert "_autoperi_material_id   mp-1221227" in text[:second]
    assert "_autoperi_material_id   mp-974729" in text[second:]
    assert text.index("data_0_") < text.index("_autoperi_material_id   mp-1221227")


def test_round_trip_csv_and_parquet_columns(tmp_path, mp20):
    table = pd.read_csv(write_structures(mp20, tmp_path / "t.csv"))
    assert list(table.columns[:1]) == ["cif"]
    assert set(NUMERIC_MP20) <= set(table.columns)
    assert table["band_gap"].tolist() == pytest.approx([s.properties["band_gap"] for s in mp20])
    parquet = pd.read_parquet(write_structures(mp20, tmp_path / "t.parquet"))
    assert parquet["material_id"].tolist() == [s.properties["material_id"] for s in mp20]


def test_round_trip_extxyz_properties_in_info(tmp_path, mp20):
    from ase.io import read as ase_read

    path = write_structures(mp20, tmp_path / "many.extxyz")
    frames = ase_read(path, index=":")
    assert len(frames) == 5
    assert frames[2].info["band_gap"] == pytest.approx(mp20[2].properties["band_gap"])


def test_parquet_with_mixed_property_types(tmp_path, mp20):
    """MP-20 ids are text, Perov-5 ids are integers: one parquet column must still hold both."""
    perov = list(read_structures(PEROV))
    path = write_structures([*mp20, *perov], tmp_path / "merged.parquet")
    back = read_structures(path)
    assert len(back) == 10 and back.problems == []
    ids = [s.properties["material_id"] for s in back]
    assert ids[:2] == ["mp-1221227", "mp-974729"]
    assert ids[5:] == [str(s.properties["material_id"]) for s in perov]
    assert [s.properties["heat_ref"] for s in back[5:]] == [s.properties["heat_ref"] for s in perov]
    assert all("heat_ref" not in s.properties for s in back[:5])
    assert_same(mp20, back[:5])


def test_round_trip_parquet_shards(tmp_path, mp20):
    path = write_structures(mp20, tmp_path / "shards", format="parquet", shard_size=2)
    assert sorted(p.name for p in path.iterdir()) == [
        "part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert [len(pd.read_parquet(p)) for p in sorted(path.iterdir())] == [2, 2, 1]
    back = read_structures(path)
    assert back.problems == []
    assert_same(mp20, back)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shards"]


def test_round_trip_poscar_single(tmp_path, mp20):
    path = write_structures(mp20[:1], tmp_path / "POSCAR")
    assert path.read_text().splitlines()[5].split() == ["Na", "Mn", "Co", "Ni", "O"]
    back = read_structures(path)
    assert back.problems == []
    assert_same(mp20[:1], back, properties=False)


def test_round_trip_keeps_lattice_orientation(tmp_path):
    """Formats that store the lattice matrix keep a rotated cell as it was."""
    matrix = [[0.0, 2.82, 2.82], [2.82, 0.0, 2.82], [2.82, 2.82, 0.0]]
    s = Structure(Lattice(matrix), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]],
                  properties={"energy": -3.25})
    for name in ("rot.extxyz", "rot.json", "POSCAR"):
        (back,) = read_structures(write_structures([s], tmp_path / name))
        np.testing.assert_allclose(back.lattice.matrix, matrix, rtol=0, atol=1e-6)
        np.testing.assert_allclose(back.frac_coords, s.frac_coords, rtol=0, atol=1e-6)
        if name != "POSCAR":
            assert back.properties["energy"] == -3.25
    (back,) = read_structures(write_structures([s], tmp_path / "rot.cif"))
    np.testing.assert_allclose(back.lattice.parameters, s.lattice.parameters, atol=1e-6)
    assert back.properties["energy"] == -3.25


def test_write_accepts_ase_atoms(tmp_path):
    from ase.build import bulk

    atoms = bulk("NaCl", "rocksalt", a=5.64)
    atoms.info["energy"] = -6.5
    path = write_structures([atoms], tmp_path / "ase.extxyz")
    (back,) = read_structures(path)
    assert [str(x) for x in back.species] == atoms.get_chemical_symbols()
    np.testing.assert_allclose(back.lattice.matrix, atoms.cell.array, rtol=0, atol=1e-6)
    np.testing.assert_allclose(back.cart_coords, atoms.positions, rtol=0, atol=1e-6)
    assert back.properties["energy"] == -6.5
    (from_cif,) = read_structures(write_structures([atoms], tmp_path / "ase.cif"))
    assert from_cif.composition == Composition("NaCl")


def test_write_refuses_non_periodic_atoms_and_other_objects(tmp_path):
    from ase.build import molecule

    with pytest.raises(ValueError, match="not periodic"):
        write_structures([molecule("H2O")], tmp_path / "m.extxyz")
    with pytest.raises(TypeError, match="Structure or ASE Atoms"):
        write_structures(["NaCl"], tmp_path / "m.extxyz")
    assert list(tmp_path.iterdir()) == []


# ====================================================================== atomic writes
def test_failed_write_leaves_nothing_behind(tmp_path, mp20):
    with pytest.raises(ValueError, match="POSCAR holds one structure, got 2"):
        write_structures(mp20[:2], tmp_path / "POSCAR")
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_the_existing_file(tmp_path, mp20):
    target = tmp_path / "POSCAR"
    target.write_text("previous content\n")
    with pytest.raises(ValueError):
        write_structures(mp20[:2], target)
    assert target.read_text() == "previous content\n"
    assert [p.name for p in tmp_path.iterdir()] == ["POSCAR"]


def test_writer_crashing_midway_keeps_the_existing_file(tmp_path, mp20, monkeypatch):
    target = tmp_path / "out.cif"
    target.write_text("previous content\n")

    def half_then_crash(structures, path):
        path.write_text(sio._cif_text(structures[:1]))
        raise RuntimeError("disk full")

    monkeypatch.setitem(sio._WRITERS, "cif", half_then_crash)
    with pytest.raises(RuntimeError, match="disk full"):
        write_structures(mp20, target)
    assert target.read_text() == "previous content\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.cif"]


def test_folder_write_crashing_midway_keeps_the_existing_folder(tmp_path, mp20, monkeypatch):
    target = write_structures(mp20[:1], tmp_path / "folder")
    before = {p.name: p.read_text() for p in target.iterdir()}
    real = sio._cif_text
    calls = []

    def crash_on_second(structures):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("killed")
        return real(structures)

    monkeypatch.setattr(sio, "_cif_text", crash_on_second)
    with pytest.raises(RuntimeError, match="killed"):
        write_structures(mp20, target)
    assert {p.name: p.read_text() for p in target.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["folder"]
