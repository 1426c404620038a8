"""`autoperi convert`: exit codes 0/1/2, one stderr line per problem, never a traceback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from autoperi.cli import main
from autoperi.data.io import read_structures

DATA = Path(__file__).parent / "data"
BAD = DATA / "bad"
PEROV = DATA / "perov_5_val_head5.csv"
MP20 = DATA / "mp_20_train_head5.csv.gz"


def run(capsys, *argv: str) -> tuple[int, list[str], list[str]]:
    code = main(["convert", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out.splitlines(), captured.err.splitlines()


def test_convert_real_csv_to_extxyz(tmp_path, capsys):
    out = tmp_path / "perov.extxyz"
    code, stdout, stderr = run(capsys, PEROV, out)
    assert code == 0
    assert stderr == []
    assert stdout == [f"wrote 5 structures to {out} (0 skipped)"]
    back = read_structures(out)
    assert len(back) == 5 and back.problems == []
    assert back[0].properties["heat_ref"] == pytest.approx(2.709153)
    assert back[0].composition.reduced_formula == "CdCuN3"


@pytest.fixture
def folder_with_one_bad_file(tmp_path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(BAD / "uncertainties.cif", folder / "a_good.cif")
    shutil.copy(MP20, folder / "b_good.csv.gz")
    shutil.copy(BAD / "partial_occupancy.cif", folder / "c_bad.cif")
    return folder


def test_folder_with_one_bad_file_exits_1(tmp_path, capsys, folder_with_one_bad_file):
    out = tmp_path / "out.extxyz"
    code, stdout, stderr = run(capsys, folder_with_one_bad_file, out)
    assert code == 1
    bad = folder_with_one_bad_file / "c_bad.cif"
    assert len(stderr) == 1, stderr
    assert stderr[0].startswith(f"{bad}: block 0 'data_FeCoAl_disordered': ")
    assert "partial occupancy" in stderr[0] and stderr[0].endswith("[skipped]")
    assert stdout == [f"wrote 6 structures to {out} (1 skipped)"]
    assert len(read_structures(out)) == 6  # the good ones are converted anyway


def test_one_line_per_problem(tmp_path, capsys):
    code, _, stderr = run(capsys, BAD / "mixed_rows.csv", tmp_path / "out.json")
    assert code == 1
    assert [line.split(": ", 2)[1] for line in stderr] == ["row 1 (bad-1)", "row 3 (overlap-3)"]
    assert all(line.startswith(f"{BAD / 'mixed_rows.csv'}: ") for line in stderr)
    assert not any("Traceback" in line for line in stderr)


def test_allow_skipped_exits_0(tmp_path, capsys, folder_with_one_bad_file):
    out = tmp_path / "out.cif"
    code, stdout, stderr = run(capsys, folder_with_one_bad_file, out, "--allow-skipped")
    assert code == 0
    assert len(stderr) == 1 and "c_bad.cif" in stderr[0]
    assert stdout == [f"wrote 6 structures to {out} (1 skipped)"]


def test_duplicates_alone_do_not_fail(tmp_path, capsys):
    code, _, stderr = run(capsys, BAD / "duplicates.cif", tmp_path / "out.cif")
    assert code == 0
    assert len(stderr) == 1 and "exact duplicate" in stderr[0] and stderr[0].endswith("[kept]")


def test_max_atoms_option(tmp_path, capsys):
    code, stdout, stderr = run(capsys, MP20, tmp_path / "out.cif", "--max-atoms", "8",
                               "--allow-skipped")
    assert code == 0
    assert len(stderr) == len([s for s in read_structures(MP20) if len(s) > 8]) > 0
    assert all("exceed the cap of 8" in line for line in stderr)
    assert all(len(s) <= 8 for s in read_structures(tmp_path / "out.cif"))


def test_missing_input_exits_2(tmp_path, capsys):
    missing = tmp_path / "nope.cif"
    code, stdout, stderr = run(capsys, missing, tmp_path / "out.cif")
    assert code == 2
    assert stdout == []
    assert stderr == [f"error: {missing}: no such file or folder"]
    assert list(tmp_path.iterdir()) == []


def test_nothing_readable_exits_2(tmp_path, capsys):
    code, _, stderr = run(capsys, BAD / "overlapping_atoms.cif", tmp_path / "out.cif")
    assert code == 2
    assert len(stderr) == 2 and "overlapping" in stderr[0]
    assert stderr[1] == f"error: no readable structures in {BAD / 'overlapping_atoms.cif'}"
    assert list(tmp_path.iterdir()) == []


def test_unwritable_output_exits_2_without_partial_file(tmp_path, capsys):
    code, _, stderr = run(capsys, PEROV, tmp_path / "POSCAR")
    assert code == 2
    assert stderr == ["error: POSCAR holds one structure, got 5: write a folder or extxyz"]
    assert list(tmp_path.iterdir()) == []


def test_installed_console_script(tmp_path):
    script = Path(sys.executable).parent / "autoperi"
    assert script.exists(), "autoperi console script not installed in this environment"
    out = tmp_path / "mp20.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([str(script), "convert", str(MP20), str(out)], capture_output=True,
                          text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert done.stdout == f"wrote 5 structures to {out} (0 skipped)\n"
    back = read_structures(out)
    assert [s.properties["material_id"] for s in back][:1] == ["mp-1221227"]
    assert len(back) == 5
