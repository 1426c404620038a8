"""`autoperi <command>`: each subcommand wraps one public function.

Problems are printed one line each (no traceback); the exit code is 0 on success, 1 when
items were skipped (unless --allow-skipped), 2 when the command could not run at all.
"""

from __future__ import annotations

import argparse
import logging
import sys

from autoperi import __version__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="autoperi", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"autoperi {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)
    for module in (_convert, _dataset):
        module.add(commands)
    args = parser.parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(main())
