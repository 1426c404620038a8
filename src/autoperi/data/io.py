"""Structures in and out of files: CIF, POSCAR, extended XYZ, pymatgen JSON, CDVAE-style CSV,
parquet, zip archives and folders of any of these.

Reading never aborts on one bad item: each problem is recorded with the file and the
block/row/frame it came from, the item is skipped (or kept with a warning) and reading goes
on. Properties travel in `Structure.properties` (CSV/parquet columns, extxyz info, CIF
`_autoperi_<name>` tags, JSON "properties"). Writes are atomic.
"""

from __future__ import annotations

import io
import json
import logging
import math
import re
import warnings
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from pymatgen.core import Structure
from pymatgen.io.cif import CifParser, CifWriter
from pymatgen.io.vasp import Poscar

from autoperi.atomic import atomic_path
from autoperi.data.checks import Limits, exact_key, structure_problems

log = logging.getLogger(__name__)

FORMATS = ("cif", "poscar", "extxyz", "json", "csv", "parquet", "zip", "folder")
_PROPERTY_TAG = "_autoperi_"
_CIF_COLUMNS = ("cif",)


class ReadError(ValueError):
    """A whole input could not be read (missing file, unknown format, strict mode)."""


@dataclass(frozen=True)
class Problem:
    """One problem met while reading: where it is and why. `skipped` False means kept."""

    source: str
    location: str
    reason: str
    skipped: bool = True

    def __str__(self) -> str:
        where = f"{self.source}: {self.location}" if self.location else self.source
        verdict = "skipped" if self.skipped else "kept"
        return f"{where}: {self.reason} [{verdict}]"


@dataclass
class ReadResult(Sequence):
    """Structures read (in file order) plus every problem met. Behaves like the list."""

    structures: list[Structure] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    def __getitem__(self, k):
        return self.structures[k]

    def __len__(self) -> int:
        return len(self.structures)

    @property
    def skipped(self) -> list[Problem]:
        return [p for p in self.problems if p.skipped]


# ====================================================================== reading
def read_structures(
    path: str | Path,
    format: str | None = None,
    limits: Limits = Limits(),  # noqa: B008 - frozen dataclass, safe to share
    strict: bool = False,
) -> ReadResult:
    """Read every structure in `path` (a file, zip or folder; format from the name).

    Bad items are skipped and reported in `result.problems`; exact duplicates are kept and
    reported. With `strict=True` the first skipped item raises `ReadError` instead.
    """
    path = Path(path)
    if not path.exists():
        raise ReadError(f"{path}: no such file or folder")
    fmt = format or detect_format(path)
    result = ReadResult()
    seen: dict[tuple, str] = {}
    for source, location, item in _iter_path(path, fmt, limits):
        where = f"{source}: {location}" if location else source
        if isinstance(item, str):
            reasons, skipped = [item], True
        else:
            reasons = structure_problems(item, limits)
            skipped = bool(reasons)
        if skipped:
            problem = Problem(source, location, "; ".join(reasons))
            if strict:
                raise ReadError(str(problem))
            log.warning("%s", problem)
            result.problems.append(problem)
            continue
        key = exact_key(item)
        if key in seen:
            result.problems.append(
                Problem(source, location, f"exact duplicate of {seen[key]}", skipped=False)
            )
        else:
            seen[key] = where
        result.structures.append(item)
    return result


def detect_format(path: Path) -> str:
    """Format of `path` from its name (compression suffix .gz ignored)."""
    if path.is_dir():
        return "folder"
    name = path.name.lower().removesuffix(".gz")
    if name.endswith((".cif", ".mcif")):
        return "cif"
    if name.endswith((".xyz", ".extxyz")):
        return "extxyz"
    if name.endswith(".json"):
        return "json"
    if name.endswith(".csv"):
        return "csv"
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith(".zip"):
        return "zip"
    if name.endswith((".vasp", ".poscar")) or name.startswith(("poscar", "contcar")):
        return "poscar"
    raise ReadError(
        f"{path}: cannot tell the format from the name; pass format= one of {', '.join(FORMATS)}"
    )


Item = tuple[str, str, "Structure | str"]  # (source, location, structure or reason)


def _iter_path(path: Path, fmt: str, limits: Limits) -> Iterator[Item]:
    if fmt == "folder":
        yield from _iter_folder(path, limits)
        return
    size = path.stat().st_size
    if size > limits.max_file_bytes:
        yield str(path), "", f"file is {size} bytes, above the cap of {limits.max_file_bytes}"
        return
    data = path.read_bytes()
    if path.name.lower().endswith(".gz") and fmt not in ("zip",):
        import gzip

        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            yield str(path), "", f"not a valid gzip file ({exc})"
            return
    yield from _iter_bytes(data, str(path), fmt, limits)


def _iter_folder(folder: Path, limits: Limits) -> Iterator[Item]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    for file in files:
        try:
            fmt = detect_format(file)
        except ReadError:
            log.info("ignoring %s: not a structure file", file)
            continue
        yield from _iter_path(file, fmt, limits)


def _iter_bytes(data: bytes, source: str, fmt: str, limits: Limits) -> Iterator[Item]:
    """Dispatch one file's content (a file on disk or a zip member) to its reader."""
    if fmt == "zip":
        yield from _iter_zip(data, source, limits)
        return
    if fmt == "parquet":
        yield from _guard(source, lambda: _iter_table(_read_parquet(data), source))
        return
    if not data.strip():
        yield source, "", "file is empty"
        return
    if b"\x00" in data[:65536]:
        yield source, "", f"binary content, not a {fmt} text file"
        return
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")  # old CIFs; every byte maps to a character
    readers = {
        "cif": _iter_cif,
        "poscar": _iter_poscar,
        "extxyz": _iter_extxyz,
        "json": _iter_json,
        "csv": lambda t, s: _iter_table(pd.read_csv(io.StringIO(t)), s),
    }
    yield from _guard(source, lambda: readers[fmt](text, source))


def _guard(source: str, make: callable) -> Iterator[Item]:
    """Run a reader; an error that stops the whole file becomes one problem for that file."""
    try:
        yield from make()
    except Exception as exc:  # noqa: BLE001 - any parser failure is reported, not raised
        yield source, "", f"unreadable: {_describe(exc)}"


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


# ---------------------------------------------------------------------- CIF
_BLOCK = re.compile(r"^\s*data_", re.IGNORECASE | re.MULTILINE)


def _iter_cif(text: str, source: str) -> Iterator[Item]:
    starts = [m.start() for m in _BLOCK.finditer(text)]
    if not starts:
        yield source, "", "no 'data_' block: not a CIF file"
        return
    for k, (lo, hi) in enumerate(zip(starts, starts[1:] + [len(text)])):
        block = text[lo:hi]
        name = block.split(None, 1)[0]
        yield source, f"block {k} '{name}'", parse_cif_block(block)


def parse_cif_block(block: str) -> Structure | str:
    """One CIF data block as a Structure, or the reason it cannot be read."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            parser = CifParser.from_str(block, occupancy_tolerance=1.0)
            structures = parser.parse_structures(primitive=False, on_error="raise")
        except Exception as exc:  # noqa: BLE001
            hints = [str(w.message) for w in caught]
            return f"invalid CIF: {_describe(exc)}" + (f" ({hints[-1][:200]})" if hints else "")
    if not structures:
        hints = [str(w.message).splitlines()[0] for w in caught]
        return "invalid CIF: " + (hints[-1][:300] if hints else "no structure in block")
    structure = structures[0]
    tags = next(iter(parser._cif.data.values())).data  # noqa: SLF001 - raw tags of the block
    props = {k[len(_PROPERTY_TAG) :]: _number_or_text(v) for k, v in tags.items()
             if k.startswith(_PROPERTY_TAG)}
    structure.properties = {**(structure.properties or {}), **props}
    return structure


def _number_or_text(value):
    if isinstance(value, list):
        value = value[0]
    try:
        number = float(value)
    except (TypeError, ValueError):
        return value
    return number


# ---------------------------------------------------------------------- POSCAR
def _iter_poscar(text: str, source: str) -> Iterator[Item]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            structure = Poscar.from_str(text).structure
    except Exception as exc:  # noqa: BLE001
        yield source, "", f"invalid POSCAR: {_describe(exc)}"
        return
    yield source, "", structure


# ---------------------------------------------------------------------- extended XYZ
def _iter_extxyz(text: str, source: str) -> Iterator[Item]:
    """Frames are cut by their atom-count line, so one bad frame does not stop the rest."""
    from ase.io import read as ase_read

    lines = text.splitlines()
    start, k = 0, 0
    while start < len(lines):
        if not lines[start].strip():
            start += 1
            continue
        location = f"frame {k} (line {start + 1})"
        try:
            count = int(lines[start].strip())
        except ValueError:
            yield source, location, f"expected an atom count, found {lines[start][:60]!r}"
            return  # frame boundaries are lost; the rest cannot be located
        frame = "\n".join(lines[start : start + count + 2]) + "\n"
        start += count + 2
        k += 1
        try:
            atoms = ase_read(io.StringIO(frame), format="extxyz")
            yield source, location, atoms_to_structure(atoms)
        except Exception as exc:  # noqa: BLE001
            yield source, location, f"invalid extxyz frame: {_describe(exc)}"


def atoms_to_structure(atoms) -> Structure | str:
    """ASE Atoms (periodic in 3-D) to a Structure; `atoms.info` numbers become properties."""
    if not all(atoms.pbc) or abs(atoms.cell.volume) == 0:
        return "not periodic in all three directions (pbc/cell missing)"
    # ASE's extxyz reader moves energy, free_energy, magmom from the comment line into a
    # SinglePointCalculator: take scalar results back so they are not lost
    results = getattr(atoms.calc, "results", None) or {}
    props = {
        k: (v.item() if isinstance(v, np.generic) else v)
        for k, v in {**results, **atoms.info}.items()
        if isinstance(v, (int, float, str, np.number))
    }
    return Structure(
        atoms.cell.array, atoms.get_chemical_symbols(), atoms.get_scaled_positions(wrap=False),
        properties=props,
    )


# ---------------------------------------------------------------------- JSON
def _iter_json(text: str, source: str) -> Iterator[Item]:
    data = json.loads(text)
    items = data if isinstance(data, list) else [data]
    for k, item in enumerate(items):
        location = f"item {k}" if isinstance(data, list) else ""
        try:
            yield source, location, Structure.from_dict(item)
        except Exception as exc:  # noqa: BLE001
            yield source, location, f"not a pymatgen Structure: {_describe(exc)}"


# ---------------------------------------------------------------------- tables
def _read_parquet(data: bytes) -> pd.DataFrame:
    import pyarrow.parquet as pq

    return pq.read_table(io.BytesIO(data)).to_pandas()


def _iter_table(table: pd.DataFrame, source: str) -> Iterator[Item]:
    """CDVAE-style table: a `cif` column, every other column a property."""
    table = table.loc[:, [c for c in table.columns if not str(c).startswith("Unnamed")]]
    if "cif" not in table.columns:
        yield source, "", f"no 'cif' column (columns: {', '.join(map(str, table.columns))})"
        return
    prop_columns = [c for c in table.columns if c != "cif"]
    for row, values in enumerate(table.itertuples(index=False, name=None)):
        record = dict(zip(table.columns, values))
        label = record.get("material_id")
        location = f"row {row}" + (f" ({label})" if isinstance(label, str) else "")
        cif = record["cif"]
        if not isinstance(cif, str) or not cif.strip():
            yield source, location, "empty cif cell"
            continue
        structure = parse_cif_block(cif)
        if isinstance(structure, Structure):
            props = {c: _clean_value(record[c]) for c in prop_columns}
            structure.properties = {
                **(structure.properties or {}),
                **{k: v for k, v in props.items() if v is not None},
            }
        yield source, location, structure


def _clean_value(value):
    if isinstance(value, (np.integer, np.floating)):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


# ====================================================================== writing
def write_structures(
    structures: Iterable, path: str | Path, format: str | None = None,
    shard_size: int | None = None,
) -> Path:
    """Write structures (pymatgen Structure or ASE Atoms) to `path`, atomically.

    Formats as for reading. "folder" writes one CIF per structure; parquet with
    `shard_size` writes a folder of shards. Returns the path written.
    """
    path = Path(path)
    structures = [_as_structure(s) for s in structures]
    fmt = format or ("folder" if path.suffix == "" and not path.name.lower().startswith(
        ("poscar", "contcar")) else detect_format(path))
    if fmt == "parquet" and shard_size:
        fmt = "parquet-shards"
    if fmt in ("folder", "parquet-shards"):
        with atomic_path(path, is_dir=True) as tmp:
            if fmt == "folder":
                for k, s in enumerate(structures):
                    (tmp / f"{k:06d}_{s.reduced_formula}.cif").write_text(_cif_text([s]))
            else:
                for k in range(0, max(len(structures), 1), shard_size):
                    _table(structures[k : k + shard_size]).to_parquet(
                        tmp / f"part-{k // shard_size:05d}.parquet", index=False)
        return path
    with atomic_path(path) as tmp:
        _WRITERS[fmt](structures, tmp)
    return path


def _as_structure(item) -> Structure:
    if isinstance(item, Structure):
        return item
    from ase import Atoms

    if isinstance(item, Atoms):
        structure = atoms_to_structure(item)
        if isinstance(structure, str):
            raise ValueError(f"cannot write ASE Atoms {item.get_chemical_formula()}: {structure}")
        return structure
    raise TypeError(f"expected pymatgen Structure or ASE Atoms, got {type(item).__name__}")


def _cif_text(structures: Sequence[Structure]) -> str:
    blocks = []
    for k, s in enumerate(structures):
        text = str(CifWriter(s))
        name = f"data_{k}_{s.composition.reduced_formula}"
        tags = [f"{_PROPERTY_TAG}{key}   {_cif_value(v)}"
                for key, v in (s.properties or {}).items() if _cif_value(v) is not None]
        # tags go right after the data_ line: before it they would belong to no block (or to
        # the previous block of a multi-block file)
        data_line = re.search(r"^data_\S*", text, flags=re.MULTILINE)
        text = text[: data_line.start()] + "\n".join([name, *tags]) + text[data_line.end() :]
        blocks.append(text)
    return "\n".join(blocks)


def _cif_value(value) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float, np.number)):
        return repr(float(value))
    if isinstance(value, str) and value and "\n" not in value:
        return "'" + value.replace("'", "") + "'" if " " in value else value
    return None


def _write_text(path: Path, text: str) -> None:
    if path.name.endswith(".gz"):
        import gzip

        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)


def _write_cif(structures, path: Path) -> None:
    _write_text(path, _cif_text(structures))


def _write_poscar(structures, path: Path) -> None:
    if len(structures) != 1:
        raise ValueError(
            f"POSCAR holds one structure, got {len(structures)}: write a folder or extxyz"
        )
    _write_text(path, Poscar(structures[0]).get_str())


def _write_extxyz(structures, path: Path) -> None:
    from ase.io import write as ase_write
    from pymatgen.io.ase import AseAtomsAdaptor

    frames = []
    for s in structures:
        atoms = AseAtomsAdaptor.get_atoms(s.copy(properties={}))
        atoms.info = {k: v for k, v in (s.properties or {}).items()
                      if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
        frames.append(atoms)
    buffer = io.StringIO()
    ase_write(buffer, frames, format="extxyz")
    _write_text(path, buffer.getvalue())


def _write_json(structures, path: Path) -> None:
    _write_text(path, json.dumps([s.as_dict() for s in structures]))


def _table(structures) -> pd.DataFrame:
    rows = [{"cif": _cif_text([s]), **(s.properties or {})} for s in structures]
    table = pd.DataFrame(rows, columns=_columns(rows))
    for column in table.columns[table.dtypes == "object"]:
        present = table[column].notna()
        if table.loc[present, column].map(type).nunique() > 1:
            # parquet wants one type per column: a column mixing e.g. int and str ids (two
            # datasets merged) becomes text, as it would after a CSV round trip
            table.loc[present, column] = table.loc[present, column].map(str)
    return table


def _columns(rows) -> list[str]:
    names = ["cif"]
    for row in rows:
        names += [k for k in row if k not in names]
    return names


def _write_csv(structures, path: Path) -> None:
    _write_text(path, _table(structures).to_csv(index=False))


def _write_parquet(structures, path: Path) -> None:
    _table(structures).to_parquet(path, index=False)


def _write_zip(structures, path: Path) -> None:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for k, s in enumerate(structures):
            archive.writestr(f"{k:06d}_{s.reduced_formula}.cif", _cif_text([s]))


_WRITERS = {
    "cif": _write_cif,
    "poscar": _write_poscar,
    "extxyz": _write_extxyz,
    "json": _write_json,
    "csv": _write_csv,
    "parquet": _write_parquet,
    "zip": _write_zip,
}


# ---------------------------------------------------------------------- zip
def _iter_zip(data: bytes, source: str, limits: Limits) -> Iterator[Item]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        yield source, "", f"not a valid zip archive ({exc})"
        return
    for info in sorted(archive.infolist(), key=lambda i: i.filename):
        if info.is_dir() or Path(info.filename).name.startswith("."):
            continue
        member = f"{source}::{info.filename}"
        try:
            fmt = detect_format(Path(info.filename))
        except ReadError:
            log.info("ignoring %s: not a structure file", member)
            continue
        if fmt in ("zip", "folder"):
            yield member, "", "nested archives are not read"
            continue
        if info.file_size > limits.max_file_bytes:
            yield member, "", f"member is {info.file_size} bytes, above the cap"
            continue
        content = archive.read(info)
        if info.filename.lower().endswith(".gz"):
            import gzip

            try:
                content = gzip.decompress(content)
            except (OSError, EOFError) as exc:
                yield member, "", f"not a valid gzip file ({exc})"
                continue
        yield from _iter_bytes(content, member, fmt, limits)
