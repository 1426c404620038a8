"""Quality columns shared by the sampling benchmarks (sample.py, schedule.py, ...): CSP match
rate / RMSE (StructureMatcher stol 0.5, ltol 0.3, angle 10, k = 1), validity, and the share
of crystals spglib finds no symmetry in (P1; symprec 0.1 Å unless given; the bundled data:
~0 %); and the generated sets the post-processing benches (relaxed.py, symmetrized.py)
score before and after."""

from __future__ import annotations

from autoperi.eval.distribution import space_groups
from autoperi.eval.match import csp_rms, csp_summary
from autoperi.eval.validity import compositional_validity, structural_validity


def p1_share(structures, symprec: float = 0.1) -> float:
    return float((space_groups(structures, symprec, progress=False) == 1).mean())


def csp_quality(predicted, truth, symprec: float = 0.1) -> dict:
    summary = csp_summary(csp_rms(predicted, truth)[:, None])
    return {"csp_match_rate": summary["match_rate"], "csp_rmse": summary["rmse"],
            "csp_p1_share": p1_share(predicted, symprec)}


def denovo_quality(made, prefix: str = "", p1: bool = True, symprec: float = 0.1) -> dict:
    row = {f"{prefix}structural_validity": float(structural_validity(made).mean()),
           f"{prefix}compositional_validity": float(compositional_validity(made).mean())}
    if p1:
        row["denovo_p1_share"] = p1_share(made, symprec)
    return row


def add_set_options(parser, num: int = 300) -> None:
    """The options `generated_sets` reads: --model, --split, --num-csp, --num-denovo, --steps,
    --seed."""
    parser.add_argument("--model", default="mp-20")
    parser.add_argument("--split", default="test")
    parser.add_argument("--num-csp", type=int, default=num)
    parser.add_argument("--num-denovo", type=int, default=num)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)


def generated_sets(model, config, args) -> tuple[list, list, list]:
    """(truth, CSP predictions for it, de novo samples) as the post-processing benches
    (relaxed.py, symmetrized.py) score them, per the `add_set_options` of `args`: the first
    `num_csp` structures of the model's own `split`, k = 1; de novo only for models that
    generate types."""
    from autoperi.data.datasets import training_dataset
    from autoperi.generate import predict_structures, sample

    truth = (training_dataset(config.data).structures(args.split)[: args.num_csp]
             if args.num_csp else [])
    csp = (predict_structures(truth, model, 1, args.steps, seed=args.seed, progress=False)
           if truth else [])
    denovo = (sample(model, args.num_denovo, steps=args.steps, seed=args.seed, progress=False)
              if args.num_denovo and config.flow.generate_types else [])
    return truth, csp, denovo
