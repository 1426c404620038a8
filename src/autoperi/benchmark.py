"""`autoperi benchmark`: one named protocol (dataset x generators x sample count), end to end.

Each generator makes its structures (de novo, or one prediction per test composition for
CSP), they are written to DIR/<generator>/samples.extxyz and judged by the same suite call
against the dataset's test split (novelty against its train split); each gets its own
report folder, and DIR/comparison.{md,json} puts the headline numbers side by side.

Generators: "autoperi" (the shipped model of the dataset), "pyxtal" (random symmetric
crystals with training compositions and space groups: the floor to beat) and "perturbed"
(training crystals shaken by 0.1 Å and 2 % strain: a sanity check of the suite; in CSP it
perturbs the answer itself, an upper bound rather than a method).
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from autoperi import __version__
from autoperi.atomic import atomic_path

GENERATORS = ("autoperi", "pyxtal", "perturbed")


@dataclass(frozen=True)
class Protocol:
    """What a benchmark run does; named presets in PROTOCOLS, any field overridable."""

    dataset: str
    model: str
    num: int = 1000
    task: str = "dng"
    steps: int = 50
    seed: int = 0
    cov: str = "mp-20"
    generators: tuple[str, ...] = GENERATORS
    mlip: str | None = None
    relax: bool = False
    phonons: int = 0


PROTOCOLS = {
    "perov-5": Protocol("perov-5", "perov-5", cov="perov-5"),
    "carbon-24": Protocol("carbon-24", "carbon-24", cov="carbon-24"),
    "mp-20": Protocol("mp-20", "mp-20", cov="mp-20"),
}

# comparison.md columns: (label, where in the metrics, is a fraction)
COLUMNS = [
    ("struct. valid", "structural_validity", True), ("comp. valid", "compositional_validity", True),
    ("unique", "uniqueness", True), ("novel", "novelty", True),
    ("V.U.N.", "valid_unique_novel", True), ("COV-R", "cov_recall", True),
    ("COV-P", "cov_precision", True), ("W1 density", "wdist_density", False),
    ("W1 #elem.", "wdist_num_elements", False), ("P1 share", "p1_share", True),
    ("metastable", "energy.metastable", True), ("S.U.N.", "sun", True),
    ("hull covered", "energy.hull_covered", True), ("S.U.N. covered", "sun_covered", True),
    ("CSP match", "csp.match_rate", True), ("CSP RMSE", "csp.rmse", False),
    ("structures/s", "structures_per_second", False),
]


def protocol(name: str, **overrides) -> Protocol:
    """A named protocol with fields replaced by the non-None `overrides`."""
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; use one of {sorted(PROTOCOLS)}")
    chosen = PROTOCOLS[name]
    changes = {k: v for k, v in overrides.items() if v is not None}
    unknown = sorted(set(changes) - set(asdict(chosen)))
    if unknown:
        raise ValueError(f"unknown protocol fields {unknown}")
    chosen = replace(chosen, **changes)
    bad = sorted(set(chosen.generators) - set(GENERATORS))
    if bad or not chosen.generators:
        raise ValueError(f"unknown generators {bad or '(none)'}; use some of {GENERATORS}")
    if (chosen.relax and not chosen.mlip) or (chosen.phonons and not chosen.relax):
        raise ValueError("relax needs an mlip, phonon checks need relax")
    if chosen.task not in ("dng", "csp") or chosen.num < 1 or chosen.steps < 1:
        raise ValueError(f"need task dng|csp, num >= 1, steps >= 1 (got {chosen.task}, "
                         f"{chosen.num}, {chosen.steps})")
    return chosen


def generate(name: str, p: Protocol, train: list, test: list, progress: bool = True) -> list:
    """Structures of generator `name` under protocol `p` (CSP: one per test crystal)."""
    if name == "autoperi":
        from autoperi.generate import predict_structures, sample

        if p.task == "csp":
            return predict_structures(test, p.model, 1, p.steps, seed=p.seed, progress=progress)
        return sample(p.model, p.num, steps=p.steps, seed=p.seed, progress=progress)
    from autoperi.baselines import PerturbedTraining, RandomSymmetric

    baseline = RandomSymmetric(train) if name == "pyxtal" else PerturbedTraining(train)
    return baseline.predict(test, p.seed) if p.task == "csp" else baseline.generate(p.num,
                                                                                    p.seed)


def run(p: Protocol, out: str | Path, workers: int = 1, fingerprints: bool = True,
        plots: bool = True, cache_dir=None, progress: bool = True,
        splits: tuple[list, list] | None = None) -> list[dict]:
    """Run protocol `p` into folder `out`; returns one row of headline numbers per
    generator (also written to out/comparison.json and out/comparison.md).
    splits: (train, test) structures instead of the protocol dataset's own splits."""
    from autoperi.data.datasets import _cache_root, load_dataset
    from autoperi.data.io import write_structures
    from autoperi.eval.report import write_report
    from autoperi.eval.suite import evaluate

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _write(out / "protocol.json", {"protocol": asdict(p), "autoperi_version": __version__,
                                   "python": platform.python_version()})
    if splits is None:
        dataset = load_dataset(p.dataset, cache_dir=cache_dir)
        splits = dataset.structures("train"), dataset.structures("test")
    train, test = splits
    rows = []
    for name in p.generators:
        start = time.perf_counter()
        structures = generate(name, p, train, test, progress)
        seconds = time.perf_counter() - start
        folder = out / name
        folder.mkdir(exist_ok=True)
        write_structures(structures, folder / "samples.extxyz")
        report = evaluate(structures, test, train, p.task, seed=p.seed, cov=p.cov,
                          with_fingerprints=fingerprints, workers=workers, progress=progress,
                          cache_dir=_cache_root(cache_dir) / "suite", mlip=p.mlip,
                          relax=p.relax, phonon_checks=p.phonons, explorer=plots)
        write_report(report, folder, plots=plots)
        metrics = dict(report.aggregate, structures_per_second=len(structures) / seconds,
                       seconds=seconds)
        rows.append({"generator": name, **{key: _lookup(metrics, key) for _, key, _ in COLUMNS},
                     "seconds": seconds, "samples": len(structures)})
        if progress:
            print(f"[{name}] {len(structures)} structures in {seconds:.1f} s\n"
                  f"{report.summary()}")
    _write(out / "comparison.json", rows)
    with atomic_path(out / "comparison.md") as tmp:
        tmp.write_text(comparison_markdown(p, rows), encoding="utf-8")
    return rows


def _lookup(metrics: dict, key: str):
    value = metrics
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def comparison_markdown(p: Protocol, rows: list[dict]) -> str:
    """One table, generators as rows; columns without any value are left out."""
    shown = [(label, key, frac) for label, key, frac in COLUMNS
             if any(_finite(r[key]) for r in rows)]
    lines = [f"# Benchmark {p.dataset} ({p.task}), autoperi {__version__}", "",
             f"{p.num if p.task == 'dng' else 'one per test crystal'} structures per "
             f"generator, seed {p.seed}, {p.steps} steps for the model; judged against the "
             "test split, novelty against the train split (`autoperi evaluate`, suite "
             "tolerances in each report).", "",
             "| generator | " + " | ".join(label for label, _, _ in shown) + " |",
             "| --- |" + " --- |" * len(shown)]
    for r in rows:
        cells = [_cell(r[key], frac) for _, key, frac in shown]
        lines.append(f"| {r['generator']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and np.isfinite(value)


def _cell(value, fraction: bool) -> str:
    if not _finite(value):
        return "n/a"
    return f"{100 * value:.1f} %" if fraction else f"{value:.3g}"


def _write(path: Path, data) -> None:
    from autoperi.eval.report import json_safe

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(json_safe(data), indent=1) + "\n", encoding="utf-8")
