"""`autoperi <command>`: each subcommand wraps one public function.

Problems are printed one line each (no traceback); the exit code is 0 on success, 1 when
items were skipped (unless --allow-skipped), 2 when the command could not run at all.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys

from autoperi import __version__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="autoperi", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"autoperi {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)
    for module in (_convert, _dataset, _train, _sample, _csp, _evaluate, _benchmark):
        module.add(commands)
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "accepts_overrides", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.overrides = extra
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.ERROR, format="%(levelname)s %(message)s"
    )
    try:
        return args.run(args)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _report(problems, allow_skipped: bool) -> int:
    for problem in problems:
        print(problem, file=sys.stderr)
    skipped = sum(p.skipped for p in problems)
    return 1 if skipped and not allow_skipped else 0


def _suite_options(p) -> None:
    """Options of the benchmark suite shared by `evaluate` and `benchmark`."""
    p.add_argument("--no-fingerprints", action="store_true",
                   help="skip the slow CrystalNN fingerprints (no COV-R / COV-P)")
    p.add_argument("--no-plots", action="store_true", help="reports without plots")
    p.add_argument("--workers", type=int, default=1, help="processes for matching and "
                                                          "fingerprints (1)")
    p.add_argument("--cache", help="dataset, fingerprint and energy cache "
                                   "(default ~/.cache/autoperi)")
    p.add_argument("--mlip", choices=("chgnet",),
                   help="energies and energy above the hull with this potential (S.U.N.)")
    p.add_argument("--relax", action="store_true",
                   help="with --mlip: relax positions and cell first (relaxation energy, "
                        "RMSD; E_hull of the relaxed structures)")
    p.add_argument("--phonons", type=int, default=0, metavar="N",
                   help="with --relax: phonon check of the first N relaxed structures (0)")


class _convert:
    @staticmethod
    def add(commands) -> None:
        p = commands.add_parser("convert", help="convert structures between file formats")
        p.add_argument("input", help="file, folder or zip of structures")
        p.add_argument("output", help="output file (format from the name) or folder")
        p.add_argument("--from", dest="in_format", help="input format if the name does not say")
        p.add_argument("--to", dest="out_format", help="output format if the name does not say")
        p.add_argument("--max-atoms", type=int, default=500, help="skip larger cells (500)")
        p.add_argument("--shard-size", type=int, help="parquet: structures per shard file")
        p.add_argument("--allow-skipped", action="store_true",
                       help="exit 0 even if some structures were skipped")
        p.set_defaults(run=_convert.run)

    @staticmethod
    def run(args) -> int:
        from autoperi.data.checks import Limits
        from autoperi.data.io import read_structures, write_structures

        result = read_structures(args.input, args.in_format, Limits(max_atoms=args.max_atoms))
        code = _report(result.problems, args.allow_skipped)
        if not result.structures:
            print(f"error: no readable structures in {args.input}", file=sys.stderr)
            return 2
        write_structures(result.structures, args.output, args.out_format, args.shard_size)
        print(f"wrote {len(result)} structures to {args.output} "
              f"({len(result.skipped)} skipped)")
        return code


class _dataset:
    @staticmethod
    def add(commands) -> None:
        p = commands.add_parser("dataset", help="prepare a named dataset or a user's data")
        p.add_argument("name", help="perov-5, carbon-24, mp-20, mpts-52, or a CSV/folder path")
        p.add_argument("--cache", help="cache folder (default ~/.cache/autoperi)")
        p.add_argument("--seed", type=int, default=0, help="split seed (0)")
        p.add_argument("--symmetrize", action="store_true",
                       help="replace structures by their spglib-refined form")
        p.add_argument("--export", help="also write the cleaned structures here (any format)")
        p.set_defaults(run=_dataset.run)

    @staticmethod
    def run(args) -> int:
        from autoperi.data.datasets import load_dataset

        dataset = load_dataset(args.name, cache_dir=args.cache, seed=args.seed,
                               symmetrize=args.symmetrize)
        print(dataset.summary())
        if args.export:
            from autoperi.data.io import write_structures

            write_structures(dataset.structures(), args.export)
        return _report(dataset.problems, allow_skipped=True)


class _train:
    @staticmethod
    def add(commands) -> None:
        p = commands.add_parser(
            "train", help="train a flow model",
            description="Train a flow model. Any config field can be overridden after the "
                        "options, e.g. --model.hidden_dim=256 --train.steps=5000.")
        p.add_argument("config", help="YAML config (see configs/)")
        p.add_argument("--out", required=True, help="run folder (checkpoints, logs, model)")
        p.add_argument("--data", help="dataset name or path (overrides data.dataset)")
        p.add_argument("--resume", action="store_true", help="continue from RUN/checkpoint")
        p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
        p.add_argument("--seed", type=int, help="training seed (overrides train.seed)")
        p.set_defaults(run=_train.run, accepts_overrides=True)

    @staticmethod
    def run(args) -> int:
        from autoperi.config import Config, parse_overrides
        from autoperi.train import is_main_process, train

        overrides = parse_overrides(args.overrides)
        if args.data:
            overrides["data.dataset"] = args.data
        if args.seed is not None:
            overrides["train.seed"] = args.seed
        config = Config.load(args.config).override(overrides)
        out = train(config, args.out, resume=args.resume, device=args.device)
        if is_main_process():  # under torchrun only rank 0 writes the model
            print(f"model written to {out / 'model'}")
        return 0


def _add_generation_options(p) -> None:
    p.add_argument("--model", help="shipped model (mp-20, perov-5, carbon-24) or a model "
                                   "folder / training run (default mp-20)")
    p.add_argument("--out", required=True, help="output file (any writable format) or folder")
    p.add_argument("--steps", type=int, default=50, help="ODE steps (50)")
    p.add_argument("--method", choices=("euler", "heun"), default="heun", help="integrator")
    p.add_argument("--seed", type=int, default=0, help="random seed (0)")
    p.add_argument("--batch-size", type=int, default=256, help="crystals per batch (256)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, ...")
    p.add_argument("--jump-at", type=float, default=1.0,
                   help="integrate to this flow time, then jump to the clean prediction "
                        "(1 = no jump; jumps raise match rates but yield P1 crystals)")
    add_clash_options(p)
    p.add_argument("--relax", action="store_true",
                   help="relax every structure (positions and cell) with CHGNet before "
                        "writing it (needs the mlip extra); adds energy_per_atom_generated, "
                        "energy_per_atom, relax_converged, or relax_problem")
    p.add_argument("--relax-fmax", type=float, metavar="F",
                   help="--relax stops at a largest force below F eV/Å (0.1)")
    p.add_argument("--relax-steps", type=int, metavar="N",
                   help="--relax stops after N FIRE steps (300)")
    p.add_argument("--relax-pressure", type=finite, metavar="P",
                   help="--relax at a hydrostatic pressure of P GPa (0; Carbon-24 was "
                        "made at 10)")
    p.add_argument("--symmetrize", nargs="?", const="default", type=tolerance, metavar="PREC",
                   help="snap every structure to the symmetry spglib finds at PREC Å (0.1 "
                        "if no value is given); adds spacegroup and symmetrize_max_shift, or "
                        "symmetrize_problem. After --relax: the relax_* and energy values "
                        "are those of the relaxed structure before snapping")


def tolerance(text: str):
    """--symmetrize's value: a positive, finite tolerance in Å, or "default" when the flag is
    given alone (argparse passes the constant through the type too)."""
    if text == "default":
        return text
    value = finite(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"PREC must be a positive tolerance in Å, got {text}")
    return value


def finite(text: str) -> float:
    """A finite number (argparse's float takes nan and inf)."""
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"need a finite number, got {text}")
    return value


def add_clash_options(p) -> None:
    """--clash-distance, --clash-scale, --clash-after (for `generate.clash_of`); the
    benchmarks use them too."""
    p.add_argument("--clash-distance", type=float, metavar="D",
                   help="push apart atoms closer than D Å after every step from flow time "
                        "--clash-after on (default: the model's model.clash_distance, "
                        "perov-5 1.2; 0 = off)")
    p.add_argument("--clash-scale", type=float, metavar="S",
                   help="push apart atoms i, j closer than S x (r_i + r_j), r the covalent "
                        "radii, likewise (default: the model's model.clash_scale; 0 = off; "
                        "with both floors set the larger acts)")
    p.add_argument("--clash-after", type=float, default=0.5, metavar="T",
                   help="flow time from which the clash floors act (0.5)")


def _check_relax_options(args) -> None:
    """--relax-fmax / --relax-steps / --relax-pressure act only with --relax: refuse them
    without it (before any sampling), else fill in their defaults."""
    tuning = [f"--relax-{name}" for name, value in (("fmax", args.relax_fmax),
                                                   ("steps", args.relax_steps),
                                                   ("pressure", args.relax_pressure))
              if value is not None]
    if tuning and not args.relax:
        raise ValueError(f"{', '.join(tuning)} need --relax")
    from autoperi.generate import RELAX_FMAX, RELAX_STEPS

    args.relax_fmax = RELAX_FMAX if args.relax_fmax is None else args.relax_fmax
    args.relax_steps = RELAX_STEPS if args.relax_steps is None else args.relax_steps
    args.relax_pressure = args.relax_pressure or 0.0


def _clash_meta(clash) -> dict:
    """The clash floor as used (the model's defaults filled in), for FILE.meta.json."""
    return {"clash_distance": clash.distance, "clash_scale": clash.scale,
            "clash_after": clash.after}


def _write_generated(structures, args, seconds: float, extra: dict) -> None:
    import json

    from autoperi import __version__
    from autoperi.atomic import atomic_path
    from autoperi.checkpoint import resolve_model_path
    from autoperi.data.io import write_structures
    from autoperi.eval.distribution import SYMPREC
    from autoperi.generate import relax_generated, symmetrize_generated, timed

    post = {}
    if args.relax:
        print(f"generated {len(structures)} structures in {seconds:.1f} s "
              f"({len(structures) / seconds:.1f} structures/s); relaxing them with CHGNet")
        structures, relax_seconds = timed(relax_generated, structures, args.relax_fmax,
                                          args.relax_steps, pressure=args.relax_pressure)
        post = {"relax": {
            "potential": "CHGNet", "fmax": args.relax_fmax, "max_steps": args.relax_steps,
            "pressure_gpa": args.relax_pressure,
            "seconds": round(relax_seconds, 2),
            "converged": sum(bool(s.properties.get("relax_converged")) for s in structures),
            "problems": sum("relax_problem" in s.properties for s in structures)}}
        print(f"relaxed in {relax_seconds:.1f} s: {post['relax']['converged']} converged, "
              f"{post['relax']['problems']} kept as generated (relax_problem)")
    if args.symmetrize is not None:
        symprec = SYMPREC if args.symmetrize == "default" else args.symmetrize
        structures, sym_seconds = timed(symmetrize_generated, structures, symprec)
        snapped = sum("symmetrize_problem" not in s.properties for s in structures)
        post["symmetrize"] = {"symprec": symprec, "seconds": round(sym_seconds, 2),
                              "problems": len(structures) - snapped}
        print(f"symmetrized {snapped} of {len(structures)} structures at {symprec} Å "
              f"({len(structures) - snapped} kept as generated, symmetrize_problem)")
    path = write_structures(structures, args.out)
    model_dir = resolve_model_path(args.model)
    meta = {
        "autoperi_version": __version__, "command": args.command,
        "model": str(args.model or "mp-20"),
        "model_config": (model_dir / "config.yaml").read_text(),
        "seed": args.seed, "steps": args.steps, "method": args.method,
        "structures": len(structures), "seconds": round(seconds, 2), **extra, **post,
    }
    with atomic_path(f"{path}.meta.json") as tmp:
        tmp.write_text(json.dumps(meta, indent=1))
    timing = "" if args.relax else (f" in {seconds:.1f} s "
                                    f"({len(structures) / seconds:.1f} structures/s)")
    print(f"wrote {len(structures)} structures to {path}{timing}; settings in "
          f"{path}.meta.json")


class _sample:
    @staticmethod
    def add(commands) -> None:
        p = commands.add_parser("sample", help="generate new crystals (de novo)")
        _add_generation_options(p)
        p.add_argument("--num", type=int, default=16, help="number of crystals (16)")
        p.add_argument("--target", action="append", default=[],
                       help="property target, name=value or name=low:high (repeatable)")
        p.add_argument("--guidance", type=float, default=1.0,
                       help="classifier-free guidance scale (1 = conditional, >1 stronger)")
        p.add_argument("--elements", help="comma-separated elements to build from (e.g. Cs,Sn,I)")
        p.add_argument("--exclude", help="comma-separated elements never to use (e.g. Pb)")
        p.add_argument("--num-atoms", type=int, help="atoms per cell (default: as in training)")
        p.add_argument("--commit-types", type=float, metavar="T",
                       help="decide atom types at flow time T in [0, 1) (at the jump at the "
                            "latest) and move only the geometry after it (default: types "
                            "flow to the end)")
        p.add_argument("--charge-neutral", action="store_true",
                       help="with --commit-types: choose the most probable charge-neutral "
                            "composition (SMACT check of the suite)")
        p.set_defaults(run=_sample.run)

    @staticmethod
    def run(args) -> int:
        from autoperi.checkpoint import load_model
        from autoperi.config import parse_targets
        from autoperi.generate import clash_of, sample, timed

        _check_relax_options(args)

        split = lambda text: [s for s in (text or "").split(",") if s.strip()]  # noqa: E731
        targets = parse_targets(args.target)
        model, _ = load_model(args.model, args.device)
        clash = clash_of(model, args.clash_distance, args.clash_scale, args.clash_after)
        structures, seconds = timed(
            sample, model, args.num, targets, args.guidance, split(args.elements),
            split(args.exclude), args.num_atoms, args.steps, args.method, args.seed,
            args.batch_size, args.device, commit_at=args.commit_types,
            charge_neutral=args.charge_neutral, jump_at=args.jump_at, clash=clash)
        _write_generated(structures, args, seconds, {
            "targets": targets, "guidance": args.guidance, "elements": args.elements,
            "exclude": args.exclude, "num_atoms": args.num_atoms,
            "commit_types": args.commit_types, "charge_neutral": args.charge_neutral,
            "jump_at": args.jump_at, **_clash_meta(clash)})
        return 0


class _csp:
    @staticmethod
    def add(commands) -> None:
        p = commands.add_parser("csp", help="predict structures for given compositions")
        p.add_argument("input", help="structures file (compositions are taken from it) or a "
                                     "text file with one formula per line")
        _add_generation_options(p)
        p.add_argument("--samples-per-input", type=int, default=1, help="k structures each (1)")
        p.set_defaults(run=_csp.run)

    @staticmethod
    def run(args) -> int:
        from pathlib import Path

        from autoperi.checkpoint import load_model
        from autoperi.data.io import ReadError, read_structures
        from autoperi.generate import clash_of, predict_structures, timed

        _check_relax_options(args)

        path = Path(args.input)
        problems = []
        if path.suffix.lower() in (".txt", ".formulas", ""):
            if not path.is_file():
                raise ValueError(f"{path}: no such file")
            inputs = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
            inputs = [line for line in inputs if line]
        else:
            try:
                result = read_structures(path)
            except ReadError as exc:
                raise ValueError(str(exc)) from None
            inputs, problems = result.structures, result.problems
        code = _report(problems, allow_skipped=False)
        if not inputs:
            raise ValueError(f"{path}: no compositions to predict")
        model, _ = load_model(args.model, args.device)
        clash = clash_of(model, args.clash_distance, args.clash_scale, args.clash_after)
        structures, seconds = timed(
            predict_structures, inputs, model, args.samples_per_input, args.steps,
            args.method, args.seed, args.batch_size, args.device,
            jump_at=args.jump_at, clash=clash)
        _write_generated(structures, args, seconds, {
            "input": str(path), "samples_per_input": args.samples_per_input,
            "jump_at": args.jump_at, **_clash_meta(clash)})
        return code


class _evaluate:
    @staticmethod
    def add(commands) -> None:
        p = commands.add_parser(
            "evaluate", help="benchmark structures against a reference set",
            description="Evaluate generated (or predicted) structures. SAMPLES, --reference and "
                        "--train are structure files/folders or named dataset splits such as "
                        "perov-5:test.")
        p.add_argument("samples", help="structures to evaluate (file, folder or dataset:split)")
        p.add_argument("--reference", required=True,
                       help="reference structures, e.g. mp-20:test (CSP: the true structures)")
        p.add_argument("--train", help="training structures for novelty (default: reference)")
        p.add_argument("--task", choices=("dng", "csp"), default="dng",
                       help="de novo generation or crystal structure prediction (dng)")
        p.add_argument("--out", help="write metrics.json, per_structure.csv, report.md and "
                                     "plots into this folder")
        p.add_argument("--seed", type=int, default=0, help="random seed (0)")
        p.add_argument("--matcher", choices=("cdvae", "strict"), default="cdvae",
                       help="StructureMatcher tolerances: cdvae 0.5/0.3/10, strict 0.3/0.2/5")
        p.add_argument("--cov", choices=("mp-20", "mpts-52", "carbon-24", "perov-5"),
                       help="COV cutoff preset (default: the reference dataset's, else mp-20)")
        _suite_options(p)
        p.add_argument("--hull", help="structures whose potential energies build the convex "
                                      "hull (default: --train, else --reference)")
        p.add_argument("--target", action="append", default=[],
                       help="property window, e.g. band_gap=1.35:1.65 (repeatable): hit rate, "
                            "MAE, Recall@100, rediscovery")
        p.add_argument("--predictor", action="append", default=[],
                       help="NAME=FOLDER: independent predictor for a target property "
                            "(default: the one shipped for the reference dataset)")
        p.add_argument("--allow-skipped", action="store_true",
                       help="exit 0 even if reference or training structures were skipped")
        p.set_defaults(run=_evaluate.run)

    @staticmethod
    def load(spec: str, cache, lenient: bool = False):
        """(structures, problems, dataset name or None) of a path or a dataset[:split]."""
        from pathlib import Path

        from autoperi.data.checks import Limits
        from autoperi.data.datasets import NAMED, SPLITS, load_dataset
        from autoperi.data.io import read_structures

        name, _, split = spec.partition(":")
        if name in NAMED and not Path(spec).exists():
            if split and split not in SPLITS:
                raise ValueError(f"{spec}: split must be one of {', '.join(SPLITS)}")
            return load_dataset(name, cache_dir=cache).structures(split or None), [], name
        # Samples are read leniently: overlapping atoms must reach the validity check.
        limits = Limits(min_distance=0.0, min_volume=0.0) if lenient else Limits()
        result = read_structures(spec, limits=limits)
        return result.structures, result.problems, None

    @staticmethod
    def predictors(specs, dataset, targets) -> dict:
        """{name: PropertyPredictor} from NAME=FOLDER specs, else the shipped ones."""
        from autoperi.eval.predictor import PropertyPredictor, shipped_predictors

        out = shipped_predictors(dataset) if dataset and targets else {}
        for spec in specs:
            name, sep, folder = spec.partition("=")
            if not sep:
                raise ValueError(f"--predictor {spec!r} must look like NAME=FOLDER")
            out[name.strip()] = PropertyPredictor.load(folder)
        missing = sorted(set(targets) - set(out))
        if missing:
            raise ValueError(f"no independent predictor for target {', '.join(missing)}; "
                             "pass --predictor NAME=FOLDER (tools/train_predictors.py)")
        return out

    @staticmethod
    def run(args) -> int:
        from autoperi.data.datasets import _cache_root
        from autoperi.eval.match import CDVAE, STRICT
        from autoperi.eval.report import write_report
        from autoperi.eval.suite import evaluate

        if args.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {args.workers}")
        samples, sample_problems, _ = _evaluate.load(args.samples, args.cache, lenient=True)
        for problem in sample_problems:
            print(f"{problem} (counted as an invalid sample)", file=sys.stderr)
        reference, problems, ref_name = _evaluate.load(args.reference, args.cache)
        train = None
        if args.train:
            train, train_problems, _ = _evaluate.load(args.train, args.cache)
            problems += train_problems
        hull = None
        if args.hull:
            hull, hull_problems, _ = _evaluate.load(args.hull, args.cache)
            problems += hull_problems
        if (args.relax or args.hull) and not args.mlip:
            raise ValueError("--relax and --hull need --mlip")
        if args.phonons and not args.relax:
            raise ValueError("--phonons needs --relax (phonons of unrelaxed crystals mean little)")
        from autoperi.config import parse_targets

        targets = parse_targets(args.target)
        predictors = _evaluate.predictors(args.predictor, ref_name, targets)
        code = _report(problems, args.allow_skipped)
        for what, items in (("samples", samples), ("reference", reference), ("train", train),
                            ("hull", hull)):
            if items is not None and not items:
                raise ValueError(f"no readable structures in {what} {getattr(args, what)}")
        try:
            report = evaluate(
                samples, reference, train, args.task,
                STRICT if args.matcher == "strict" else CDVAE, args.seed,
                cov=args.cov or ref_name or "mp-20", with_fingerprints=not args.no_fingerprints,
                workers=args.workers, unreadable=sum(p.skipped for p in sample_problems),
                cache_dir=_cache_root(args.cache) / "suite", mlip=args.mlip,
                relax=args.relax, hull_reference=hull, targets=targets, predictors=predictors,
                phonon_checks=args.phonons, explorer=bool(args.out) and not args.no_plots)
            print(report.summary())
            if args.out:
                write_report(report, args.out, plots=not args.no_plots)
                print(f"report written to {args.out}")
        except ImportError as exc:  # an optional dependency of the suite is missing
            raise ValueError(f"{exc} (pip install 'autoperi[eval]')") from None
        return code


class _benchmark:
    @staticmethod
    def add(commands) -> None:
        from autoperi.benchmark import GENERATORS, PROTOCOLS

        p = commands.add_parser(
            "benchmark", help="run a named protocol: generators x dataset, one comparison table",
            description="Generate with each generator, evaluate each against the dataset's "
                        "test split (novelty vs train) and write DIR/<generator>/ reports plus "
                        "DIR/comparison.md and comparison.json.")
        p.add_argument("protocol", choices=sorted(PROTOCOLS), help="dataset protocol")
        p.add_argument("--out", required=True, help="output folder")
        p.add_argument("--generators", help=f"comma-separated subset of {','.join(GENERATORS)}")
        p.add_argument("--num", type=int, help="structures per generator (1000; dng)")
        p.add_argument("--task", choices=("dng", "csp"), help="de novo (default) or CSP")
        p.add_argument("--steps", type=int, help="model ODE steps (50)")
        p.add_argument("--seed", type=int, help="seed (0)")
        _suite_options(p)
        p.set_defaults(run=_benchmark.run)

    @staticmethod
    def run(args) -> int:
        from autoperi.benchmark import protocol, run

        chosen = protocol(
            args.protocol, num=args.num, task=args.task, steps=args.steps, seed=args.seed,
            mlip=args.mlip, relax=args.relax or None, phonons=args.phonons or None,
            generators=tuple(g.strip() for g in args.generators.split(",") if g.strip())
            if args.generators else None)
        run(chosen, args.out, workers=args.workers, fingerprints=not args.no_fingerprints,
            plots=not args.no_plots, cache_dir=args.cache)
        print(f"comparison written to {args.out}/comparison.md")
        return 0


if __name__ == "__main__":
    sys.exit(main())
