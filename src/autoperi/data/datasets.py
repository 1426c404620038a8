"""Named datasets and user data: read, clean, deduplicate, split, cache.

`load_dataset("perov-5")` reads the bundled rows (or, with source="download", the canonical
CDVAE/DiffCSP files), cleans each structure (primitive, Niggli-reduced, space group at a
stated tolerance), drops exact duplicates, makes a reproducible 80/10/10 split stratified by
space group, and caches the result as tensors so the next load is instant.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import urllib.request
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from autoperi.atomic import atomic_path
from autoperi.data.checks import Limits, exact_key
from autoperi.data.clean import CleanOptions, clean_with_symmetry
from autoperi.data.crystal import CrystalBatch
from autoperi.data.io import Problem, read_structures

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
CACHE_FORMAT = 2  # bump when the cached content changes
_CDVAE = "https://raw.githubusercontent.com/txie-93/cdvae/main/data"
_DIFFCSP = "https://raw.githubusercontent.com/jiaor17/DiffCSP/main/data"


@dataclass(frozen=True)
class DatasetInfo:
    """A named dataset: bundled files (inside the package) and canonical download URLs."""

    bundled: tuple[str, ...]
    urls: tuple[str, ...]
    properties: tuple[str, ...]
    description: str


NAMED = {
    "perov-5": DatasetInfo(
        ("perov_5/train_subset1024.csv.gz", "perov_5/val.csv.gz"),
        tuple(f"{_CDVAE}/perov_5/{s}.csv" for s in SPLITS),
        ("heat_ref", "heat_all", "dir_gap", "ind_gap"),
        "5-atom perovskites ABX3 (Castelli et al. 2012)",
    ),
    "carbon-24": DatasetInfo(
        ("carbon_24/val.csv.gz",),
        tuple(f"{_CDVAE}/carbon_24/{s}.csv" for s in SPLITS),
        ("energy_per_atom",),
        "carbon allotropes, 6-24 atoms (AIRSS, Pickard 2020)",
    ),
    "mp-20": DatasetInfo(
        ("mp_20/train_pilot1000.csv.gz", "mp_20/val_pilot1000.csv.gz",
         "mp_20/val_biternary.csv.gz"),
        tuple(f"{_CDVAE}/mp_20/{s}.csv" for s in SPLITS),
        ("formation_energy_per_atom", "band_gap", "e_above_hull"),
        "Materials Project, <= 20 atoms (CDVAE curation)",
    ),
    "mpts-52": DatasetInfo(
        ("mpts_52/val.csv.gz",),
        tuple(f"{_DIFFCSP}/mpts_52/{s}.csv" for s in SPLITS),
        ("formation_energy_per_atom", "energy_above_hull"),
        "Materials Project time split, <= 52 atoms (DiffCSP)",
    ),
}


@dataclass(frozen=True)
class DatasetConfig:
    """Everything that decides a dataset's content; hashed into the cache key."""

    name: str
    sources: tuple[str, ...]
    clean: CleanOptions = CleanOptions()
    max_atoms: int = 500
    seed: int = 0
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)


@dataclass
class CrystalDataset(Dataset):
    """A cleaned dataset: all crystals as one CrystalBatch plus split labels.

    Indexing gives single-crystal batches; `loader` batches them with CrystalBatch.collate.
    """

    crystals: CrystalBatch
    split: np.ndarray  # [B] str: "train" / "val" / "test"
    ids: list[str]  # material id (or source location) of each crystal
    config: DatasetConfig
    problems: list[Problem] = field(default_factory=list)
    duplicates_removed: int = 0
    symmetry_ops: torch.Tensor | None = None  # [M, 3, 4] space-group operations (R | t)
    symmetry_counts: torch.Tensor | None = None  # [B] operations per crystal

    def __post_init__(self) -> None:
        self._offsets = np.concatenate([[0], np.cumsum(self.crystals.num_atoms.numpy())])
        if self.symmetry_counts is not None:
            self._op_offsets = np.concatenate([[0], np.cumsum(self.symmetry_counts.numpy())])

    def symmetry(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        """Space-group operations of the crystals at `indices`: (ops [M, 3, 4], counts [b]),
        acting on fractional coordinates of the cleaned cells (f' = R f + t)."""
        idx = np.asarray(indices, dtype=np.int64)
        ops = [self.symmetry_ops[self._op_offsets[k]:self._op_offsets[k + 1]] for k in idx]
        return torch.cat(ops), self.symmetry_counts[idx]

    def __len__(self) -> int:
        return self.crystals.num_crystals

    def __getitem__(self, k: int) -> CrystalBatch:
        lo, hi = int(self._offsets[k]), int(self._offsets[k + 1])
        c = self.crystals
        return CrystalBatch(
            atomic_numbers=c.atomic_numbers[lo:hi],
            frac_coords=c.frac_coords[lo:hi],
            lattice=c.lattice[k : k + 1],
            num_atoms=c.num_atoms[k : k + 1],
            properties={n: v[k : k + 1] for n, v in c.properties.items()},
        )

    def indices(self, split: str) -> np.ndarray:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return np.nonzero(self.split == split)[0]

    def subset(self, split: str) -> torch.utils.data.Subset:
        return torch.utils.data.Subset(self, self.indices(split).tolist())

    def loader(self, split: str, batch_size: int = 64, shuffle: bool = False,
               seed: int = 0) -> DataLoader:
        generator = torch.Generator().manual_seed(seed)
        return DataLoader(self.subset(split), batch_size=batch_size, shuffle=shuffle,
                          collate_fn=CrystalBatch.collate, generator=generator)

    def structures(self, split: str | None = None) -> list:
        rows = range(len(self)) if split is None else self.indices(split)
        return [self[int(k)].to_structures()[0] for k in rows]

    def summary(self) -> str:
        counts = {s: int((self.split == s).sum()) for s in SPLITS}
        groups = self.crystals.properties["spacegroup"]
        p1 = float((groups == 1).float().mean()) * 100
        n = self.crystals.num_atoms.float()
        skipped = sum(p.skipped for p in self.problems)
        return (
            f"{self.config.name}: {len(self)} crystals "
            f"(train {counts['train']} / val {counts['val']} / test {counts['test']}), "
            f"{int(n.min())}-{int(n.max())} atoms (mean {float(n.mean()):.1f}), "
            f"{len(torch.unique(groups))} space groups (P1 {p1:.1f} %), "
            f"{skipped} skipped, {self.duplicates_removed} exact duplicates removed"
        )


def load_dataset(
    name: str,
    cache_dir: str | Path | None = None,
    seed: int = 0,
    symmetrize: bool = False,
    symprec: float = 0.1,
    max_atoms: int = 500,
    source: str = "bundled",
    progress: bool = True,
) -> CrystalDataset:
    """A named dataset (see NAMED) or a user's file/folder (any format read_structures reads).

    source: "bundled" (rows shipped in the package) or "download" (canonical files, cached).
    """
    config = DatasetConfig(
        name=name,
        sources=tuple(str(p) for p in _source_files(name, source, cache_dir)),
        clean=CleanOptions(symprec=symprec, symmetrize=symmetrize),
        max_atoms=max_atoms,
        seed=seed,
    )
    folder = _cache_root(cache_dir) / f"{_slug(name)}-{_cache_key(config)}"
    if (folder / "meta.json").exists():
        return _load_cache(folder, config)
    dataset = build_dataset(config, progress)
    _save_cache(dataset, folder)
    return dataset


def training_dataset(data, progress: bool = True) -> CrystalDataset:
    """The dataset a config's `data` section trains on, split as in training (same name,
    split seed, symprec and max_atoms): what benchmarks of a trained model must load."""
    return load_dataset(data.dataset, seed=data.seed, symprec=data.symprec,
                        max_atoms=data.max_atoms, progress=progress)


def build_dataset(config: DatasetConfig, progress: bool = True) -> CrystalDataset:
    """Read, clean, deduplicate and split (no cache)."""
    limits = Limits(max_atoms=config.max_atoms)
    structures, ids, problems = [], [], []
    for source in config.sources:
        result = read_structures(source, limits=limits)
        problems += result.problems
        for k, s in enumerate(result.structures):
            structures.append(s)
            ids.append(str((s.properties or {}).get("material_id", f"{Path(source).name}#{k}")))
    cleaned, kept_ids, kept_ops, seen = [], [], [], set()
    duplicates = 0
    for s, ident in tqdm(list(zip(structures, ids)), desc=f"cleaning {config.name}",
                         disable=len(structures) < 500 or not progress):
        try:
            c, ops = clean_with_symmetry(s, config.clean)
        except Exception as exc:  # noqa: BLE001 - spglib/pymatgen failures are per structure
            problems.append(Problem(ident, "", f"cleaning failed: {exc}"))
            continue
        key = exact_key(c)
        if key in seen:
            duplicates += 1
            continue
        seen.add(key)
        cleaned.append(c)
        kept_ids.append(ident)
        kept_ops.append(torch.from_numpy(ops))
    if not cleaned:
        raise ValueError(f"{config.name}: no usable structures in {list(config.sources)}")
    crystals = CrystalBatch.from_structures(cleaned, dtype=torch.float64)
    groups = crystals.properties["spacegroup"].long().numpy()
    split = stratified_split(groups, config.fractions, config.seed)
    return CrystalDataset(crystals, split, kept_ids, config, problems, duplicates,
                          torch.cat(kept_ops), torch.tensor([len(o) for o in kept_ops]))


def stratified_split(strata: np.ndarray, fractions=(0.8, 0.1, 0.1), seed: int = 0) -> np.ndarray:
    """Assign each item to train/val/test so that every stratum is split in `fractions`.

    Within a stratum items are shuffled (by seed) and dealt in a repeating pattern of 10
    (8 train, 1 val, 1 test for 80/10/10) that starts at a random phase, so even small
    strata reach every split in expectation and large ones match the fractions to one item.
    """
    if abs(sum(fractions) - 1.0) > 1e-9 or any(f < 0 for f in fractions):
        raise ValueError(f"fractions must be non-negative and sum to 1, got {fractions}")
    rng = np.random.default_rng(seed)
    pattern_len = 10 if all(abs(f * 10 - round(f * 10)) < 1e-9 for f in fractions) else 100
    pattern = np.repeat(np.arange(3), [round(f * pattern_len) for f in fractions])
    out = np.empty(len(strata), dtype=object)
    for stratum in np.unique(strata):
        members = rng.permutation(np.nonzero(strata == stratum)[0])
        phase = rng.integers(pattern_len)
        labels = pattern[(np.arange(len(members)) + phase) % pattern_len]
        out[members] = np.array(SPLITS)[labels]
    return out.astype(str)


# ---------------------------------------------------------------------- sources
def _source_files(name: str, source: str, cache_dir) -> list[Path]:
    if name in NAMED:
        info = NAMED[name]
        if source == "bundled":
            root = resources.files("autoperi.data") / "files"
            return [Path(str(root / f)) for f in info.bundled]
        if source == "download":
            return [_download(url, _cache_root(cache_dir) / "downloads" / _slug(name))
                    for url in info.urls]
        raise ValueError(f"source must be 'bundled' or 'download', got {source!r}")
    path = Path(name)
    if not path.exists():
        raise ValueError(
            f"{name!r} is neither a named dataset ({', '.join(NAMED)}) nor an existing path"
        )
    return [path]


def _download(url: str, folder: Path, timeout: float = 60.0) -> Path:
    """Fetch `url` once into `folder` (atomic), returning the local file."""
    target = folder / url.rsplit("/", 1)[-1]
    if target.exists():
        return target
    log.info("downloading %s", url)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, atomic_path(target) as tmp:
            tmp.write_bytes(response.read())
    except OSError as exc:
        raise OSError(f"cannot download {url} ({exc}); use the bundled rows (source='bundled') "
                      "or pass a local file") from exc
    return target


# ---------------------------------------------------------------------- cache
def _cache_root(cache_dir) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    return Path(os.environ.get("AUTOPERI_CACHE", Path.home() / ".cache" / "autoperi"))


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in Path(name).name)[:40]


def _cache_key(config: DatasetConfig) -> str:
    from autoperi import __version__

    digest = hashlib.sha256()
    digest.update(json.dumps(asdict(config), sort_keys=True, default=str).encode())
    digest.update(f"{__version__}/{CACHE_FORMAT}".encode())
    for source in config.sources:
        for file in sorted(Path(source).rglob("*")) if Path(source).is_dir() else [Path(source)]:
            if file.is_file():
                digest.update(file.name.encode())
                digest.update(hashlib.sha256(file.read_bytes()).digest())
    return digest.hexdigest()[:16]


def _save_cache(dataset: CrystalDataset, folder: Path) -> None:
    from autoperi import __version__

    c = dataset.crystals
    tensors = {
        "atomic_numbers": c.atomic_numbers,
        "frac_coords": c.frac_coords,
        "lattice": c.lattice,
        "num_atoms": c.num_atoms,
        **{f"property.{n}": v for n, v in c.properties.items()},
        "symmetry_ops": dataset.symmetry_ops,
        "symmetry_counts": dataset.symmetry_counts,
    }
    meta = {
        "version": __version__,
        "config": asdict(dataset.config),
        "split": dataset.split.tolist(),
        "ids": dataset.ids,
        "duplicates_removed": dataset.duplicates_removed,
        "problems": [asdict(p) for p in dataset.problems],
    }
    with atomic_path(folder, is_dir=True) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()},
                  str(tmp / "crystals.safetensors"))
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))


def _load_cache(folder: Path, config: DatasetConfig) -> CrystalDataset:
    tensors = load_file(str(folder / "crystals.safetensors"))
    meta = json.loads((folder / "meta.json").read_text())
    crystals = CrystalBatch(
        atomic_numbers=tensors["atomic_numbers"],
        frac_coords=tensors["frac_coords"],
        lattice=tensors["lattice"],
        num_atoms=tensors["num_atoms"],
        properties={k.split(".", 1)[1]: v for k, v in tensors.items()
                    if k.startswith("property.")},
    )
    return CrystalDataset(
        crystals, np.array(meta["split"]), meta["ids"], config,
        [Problem(**p) for p in meta["problems"]], meta["duplicates_removed"],
        tensors["symmetry_ops"], tensors["symmetry_counts"],
    )

