"""Regenerate the hand-made bad input files in this folder: `python make_bad_files.py`.

Every file is written from the literal text below (no downloads); README.md lists the
expected verdict for each. The binary file uses a fixed seed, so reruns are byte-identical.
"""

from __future__ import annotations

import gzip
import random
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def cif(name: str, a: float, sites: list[tuple], b: float | None = None,
        c: float | None = None, extra: str = "", occupancy: bool = False,
        type_symbol: bool = True) -> str:
    """A P1 CIF block. sites: (type_symbol, label, x, y, z[, occupancy]) with x/y/z as text."""
    head = [f"data_{name}", extra.rstrip("\n") if extra else None,
            "_symmetry_space_group_name_H-M   'P 1'",
            f"_cell_length_a   {a}", f"_cell_length_b   {b or a}",
            f"_cell_length_c   {c or a}", "_cell_angle_alpha   90",
            "_cell_angle_beta   90", "_cell_angle_gamma   90",
            "loop_", " _symmetry_equiv_pos_as_xyz", "  'x, y, z'", "loop_"]
    cols = (["_atom_site_type_symbol"] if type_symbol else []) + [
        "_atom_site_label", "_atom_site_fract_x", "_atom_site_fract_y", "_atom_site_fract_z"]
    if occupancy:
        cols.append("_atom_site_occupancy")
    lines = [x for x in head if x is not None] + [" " + col for col in cols]
    for site in sites:
        values = list(site) if type_symbol else list(site[1:])
        lines.append("  " + "  ".join(str(v) for v in values))
    return "\n".join(lines) + "\n"


NACL = [("Na", "Na1", "0.0", "0.0", "0.0"), ("Cl", "Cl1", "0.5", "0.5", "0.5")]
CSCL = [("Cs", "Cs1", "0.0", "0.0", "0.0"), ("Cl", "Cl1", "0.5", "0.5", "0.5")]
GOOD_NACL = cif("NaCl_good", 3.2, NACL)
GOOD_CSCL = cif("CsCl_good", 4.12, CSCL)
GOOD_KBR = cif("KBr_good", 3.8, [("K", "K1", "0.0", "0.0", "0.0"),
                                  ("Br", "Br1", "0.5", "0.5", "0.5")])
BAD_OVERLAP = cif("NaCl_overlap", 3.2, [("Na", "Na1", "0.0", "0.0", "0.0"),
                                        ("Cl", "Cl1", "0.03125", "0.0", "0.0")])

POSCAR_HEAD = "{title}\n1.0\n{lattice}\n{species}\n{counts}\nDirect\n"


def poscar(title: str, lattice: list[str], species: str, counts: str, coords: list[str]) -> str:
    return POSCAR_HEAD.format(title=title, lattice="\n".join(lattice), species=species,
                              counts=counts) + "\n".join(coords) + "\n"


def extxyz_frame(a: float, atoms: list[tuple], info: str = "") -> str:
    lattice = f'Lattice="{a} 0.0 0.0 0.0 {a} 0.0 0.0 0.0 {a}"'
    lines = [str(len(atoms)), f'{lattice} Properties=species:S:1:pos:R:3 {info} pbc="T T T"']
    lines += [f"{s} {x} {y} {z}" for s, x, y, z in atoms]
    return "\n".join(lines) + "\n"


FILES: dict[str, str | bytes] = {
    # a loop whose rows do not match its header, and a quote that never closes
    "malformed_syntax.cif": (
        "data_broken\n_cell_length_a 3.2\n_cell_length_b 3.2\n_cell_length_c 'unterminated\n"
        "_cell_angle_alpha 90\n_cell_angle_beta 90\n_cell_angle_gamma 90\n"
        "loop_\n _atom_site_label\n _atom_site_fract_x\n _atom_site_fract_y\n"
        " _atom_site_fract_z\n  Na1  0.0  0.0\n  Cl1  0.5\n"
    ),
    # standard uncertainties in parentheses: valid CIF, must be read as 0.707 etc.
    "uncertainties.cif": cif("NaCl_esd", "3.2(1)", [
        ("Na", "Na1", "0.0", "0.0", "0.0"), ("Cl", "Cl1", "0.707(2)", "0.5(1)", "0.5")]),
    # Fe/Co share one site half and half
    "partial_occupancy.cif": cif("FeCoAl_disordered", 2.9, [
        ("Fe", "Fe1", "0.0", "0.0", "0.0", "0.5"), ("Co", "Co1", "0.0", "0.0", "0.0", "0.5"),
        ("Al", "Al1", "0.5", "0.5", "0.5", "1.0")], occupancy=True),
    # label Xx1 and no _atom_site_type_symbol column
    "label_not_element.cif": cif("XxCl", 3.2, [
        ("", "Xx1", "0.0", "0.0", "0.0"), ("", "Cl1", "0.5", "0.5", "0.5")],
        type_symbol=False),
    # a type symbol that is no element
    "symbol_not_element.cif": cif("QqCl", 3.2, [
        ("Qq", "Qq1", "0.0", "0.0", "0.0"), ("Cl", "Cl1", "0.5", "0.5", "0.5")]),
    "nan_coords.poscar": poscar("NaCl with a NaN coordinate",
                                ["3.2 0.0 0.0", "0.0 3.2 0.0", "0.0 0.0 3.2"], "Na Cl", "1 1",
                                ["0.0 0.0 0.0", "nan 0.5 0.5"]),
    "inf_coords.extxyz": extxyz_frame(3.2, [("Na", 0.0, 0.0, 0.0), ("Cl", "inf", 1.6, 1.6)]),
    # c = a: the three lattice vectors span a plane
    "zero_volume.poscar": poscar("NaCl flat cell",
                                 ["3.2 0.0 0.0", "0.0 3.2 0.0", "3.2 0.0 0.0"], "Na Cl", "1 1",
                                 ["0.0 0.0 0.0", "0.5 0.5 0.5"]),
    # c = -z: a left-handed cell, det < 0
    "negative_volume.poscar": poscar("NaCl left-handed cell",
                                     ["3.2 0.0 0.0", "0.0 3.2 0.0", "0.0 0.0 -3.2"], "Na Cl",
                                     "1 1", ["0.0 0.0 0.0", "0.5 0.5 0.5"]),
    # Na and Cl 0.1 Å apart (0.03125 * 3.2 Å)
    "overlapping_atoms.cif": BAD_OVERLAP,
    # one Na in a 30 Å cube: nearest image 30 Å away
    "isolated_atom.poscar": poscar("Na alone", ["30.0 0.0 0.0", "0.0 30.0 0.0", "0.0 0.0 30.0"],
                                   "Na", "1", ["0.0 0.0 0.0"]),
    "empty.cif": "",
    # duplicates: the same NaCl block twice (second renamed) plus CsCl
    "duplicates.cif": GOOD_NACL + "\n" + GOOD_CSCL + "\n" + GOOD_NACL.replace(
        "data_NaCl_good", "data_NaCl_again"),
    # three good blocks around one overlapping block
    "mixed_blocks.cif": "\n".join([GOOD_NACL, BAD_OVERLAP, GOOD_CSCL, GOOD_KBR]),
    # frames 0 and 2 good, frame 1 has a NaN position, frame 3 good
    "mixed_frames.extxyz": (
        extxyz_frame(3.2, [("Na", 0.0, 0.0, 0.0), ("Cl", 1.6, 1.6, 1.6)], "energy=-1.5")
        + extxyz_frame(3.2, [("Na", 0.0, 0.0, 0.0), ("Cl", "nan", 1.6, 1.6)], "energy=-2.5")
        + extxyz_frame(4.12, [("Cs", 0.0, 0.0, 0.0), ("Cl", 2.06, 2.06, 2.06)], "energy=-3.5")
        + extxyz_frame(3.8, [("K", 0.0, 0.0, 0.0), ("Br", 1.9, 1.9, 1.9)], "energy=-4.5")
    ),
}


def csv_text(rows: list[tuple[str, str, float]], with_cif: bool = True) -> str:
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["material_id", "cif" if with_cif else "structure", "energy"])
    writer.writerows(rows)
    return buffer.getvalue()


FILES["mixed_rows.csv"] = csv_text([
    ("good-0", GOOD_NACL, -1.5),
    ("bad-1", "data_garbage\n_cell_length_a oops\nthis is not a CIF\n", -2.5),
    ("good-2", GOOD_CSCL, -3.5),
    ("overlap-3", BAD_OVERLAP, -4.5),
    ("good-4", GOOD_KBR, -5.5),
])
FILES["duplicates.csv"] = csv_text([
    ("first", GOOD_NACL, -1.5), ("other", GOOD_CSCL, -2.5), ("copy", GOOD_NACL, -1.5)])
FILES["no_cif_column.csv"] = csv_text([("good-0", GOOD_NACL, -1.5)], with_cif=False)
# plain text with a .gz name
FILES["not_gzip.csv.gz"] = csv_text([("good-0", GOOD_NACL, -1.5)])
# random bytes with NULs, fixed seed
FILES["binary.cif"] = bytes(random.Random(0).randrange(256) for _ in range(512)) + b"\x00" * 8


def write_zip(path: Path) -> None:
    members = {"a_NaCl.cif": GOOD_NACL, "b_overlap.cif": BAD_OVERLAP, "c_CsCl.cif": GOOD_CSCL,
               "notes.txt": "not a structure; ignored\n"}
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, text in members.items():
            info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, text)


def main() -> None:
    for name, content in FILES.items():
        data = content if isinstance(content, bytes) else content.encode()
        (HERE / name).write_bytes(data)
    write_zip(HERE / "mixed_members.zip")
    assert gzip  # imported so a reader sees not_gzip.csv.gz is deliberately not compressed


if __name__ == "__main__":
    main()
