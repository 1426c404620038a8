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


def generated_sets(model, config, split: str, num_csp: int, num_denovo: int, steps: int,
                   seed: int) -> tuple[list, list, list]:
    """(truth, CSP predictions for it, de novo samples) as the post-processing benches
    (relaxed.py, symmetrized.py) score them: the first `num_csp` structures of the model's
    own `split`, k = 1; de novo only for models that generate types."""
    from autoperi.data.datasets import training_dataset
    from autoperi.generate import predict_structures, sample

    truth = training_dataset(config.data).structures(split)[:num_csp] if num_csp else []
    csp = predict_structures(truth, model, 1, steps, seed=seed, progress=False) if truth else []
    denovo = (sample(model, num_denovo, steps=steps, seed=seed, progress=False)
              if num_denovo and config.flow.generate_types else [])
    return truth, csp, denovo
