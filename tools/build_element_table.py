"""Regenerate src/autoperi/data/files/magpie_elements.csv from matminer's Magpie tables.

Run once when the table should change (needs `pip install matminer`); the package itself
reads only the CSV. Rows are Z = 1..103, columns the Magpie preset properties.
"""

from pathlib import Path

import matminer

# The elemental properties of matminer's ElementProperty "magpie" preset.
PROPERTIES = [
    "Number", "MendeleevNumber", "AtomicWeight", "MeltingT", "Column", "Row",
    "CovalentRadius", "Electronegativity", "NsValence", "NpValence", "NdValence", "NfValence",
    "NValence", "NsUnfilled", "NpUnfilled", "NdUnfilled", "NfUnfilled", "NUnfilled",
    "GSvolume_pa", "GSbandgap", "GSmagmom", "SpaceGroupNumber",
]
MAX_Z = 103


def read_table(name: str) -> list[str]:
    folder = Path(matminer.__file__).parent / "utils" / "data_files" / "magpie_elementdata"
    values = (folder / f"{name}.table").read_text().split("\n")
    return [v.strip() for v in values[:MAX_Z]]


def main() -> None:
    columns = {name: read_table(name) for name in PROPERTIES}
    out = Path(__file__).parents[1] / "src/autoperi/data/files/magpie_elements.csv"
    lines = ["Z," + ",".join(PROPERTIES)]
    for z in range(1, MAX_Z + 1):
        row = [columns[name][z - 1] for name in PROPERTIES]
        lines.append(f"{z}," + ",".join("" if v in ("Missing", "") else v for v in row))
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out} ({MAX_Z} elements x {len(PROPERTIES)} properties)")


if __name__ == "__main__":
    main()
