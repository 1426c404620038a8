"""Evaluation benchmark: the suite on 1,000 (and 5,000) structures against mp-20 (~8k
references) versus the naive all-pairs StructureMatcher approach, on the same data.

Samples (seeded): 30 % moved copies of mp-20 crystals (rotated, translated, atoms permuted,
perturbed 0.05 Å), 5 % supercells and 5 % uniformly expanded copies of mp-20 crystals,
10 % moved copies of other samples (planted duplicates) and 50 % other real crystals
(drawn from mpts-52 crystals of <= 20 atoms, perov-5 and carbon-24). References: every
crystal of the bundled mp-20 dataset.

Timed (CPU seconds of this process, and wall seconds): validity (structural,
compositional, BVR), uniqueness, novelty vs the references, the fingerprint novelty
score, CrystalNN fingerprints (on a random subset, scaled to N, unless --full-fingerprints)
and the whole `evaluate` call. The naive approach (plain `StructureMatcher.fit` over all
pairs, stopping at the first match) is too slow to run in full: its time is estimated from
the exact number of `fit` calls it would make (known from the decisions) in two strata,
different reduced formula (rejected by fit's composition check) and same formula, each
priced by timing a random sample of such pairs. The naive loop is also run in full for a
random subset of queries: its decisions must equal the fast ones, and its time checks
the estimate.

    nice -n 10 python bench/evaluate.py --sizes 1000 5000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from pymatgen.core import Structure  # noqa: E402

from autoperi.atomic import atomic_path  # noqa: E402
from autoperi.data.datasets import load_dataset  # noqa: E402
from autoperi.eval.distribution import crystalnn_fingerprints  # noqa: E402
from autoperi.eval.match import CDVAE  # noqa: E402
from autoperi.eval.novelty import (  # noqa: E402
    _fit,
    first_matches,
    formula_key,
    naive_first_matches,
    novelty_scores,
    rewritten_copy,
)
from autoperi.eval.suite import evaluate  # noqa: E402
from autoperi.eval.validity import (  # noqa: E402
    bond_validation_rate,
    compositional_validity,
    structural_validity,
)

HERE = Path(__file__).parent


def timed(fn, *args, **kwargs):
    """(result, cpu seconds, wall seconds)."""
    cpu, wall = time.process_time(), time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.process_time() - cpu, time.perf_counter() - wall


def make_samples(n: int, references, others, rng) -> list[Structure]:
    counts = {"copy": int(0.3 * n), "super": int(0.05 * n), "expand": int(0.05 * n),
              "dup": int(0.1 * n)}
    counts["other"] = n - sum(counts.values())
    out = [rewritten_copy(references[k], int(rng.integers(2**31)), 0.05)
           for k in rng.choice(len(references), counts["copy"])]
    for k in rng.choice(len(references), counts["super"]):
        s = references[k].copy()
        s.make_supercell([2, 1, 1])
        out.append(s)
    for k in rng.choice(len(references), counts["expand"]):
        s = references[k].copy()
        s.scale_lattice(s.volume * 1.2)
        out.append(s)
    out += [others[k] for k in rng.choice(len(others), counts["other"], replace=False)]
    out += [rewritten_copy(out[k], int(rng.integers(2**31)), 0.05)
            for k in rng.choice(len(out), counts["dup"])]
    return [out[k] for k in rng.permutation(len(out))]


# ---------------------------------------------------------------------- naive estimate
def naive_calls(queries, candidates, hits, keys_q, keys_c):
    """Per query, the candidate indices naive `fit` is called on, as (same, different)
    formula counts. candidates None: uniqueness against earlier representatives."""
    same = np.zeros(len(queries), dtype=np.int64)
    total = np.zeros(len(queries), dtype=np.int64)
    if candidates is None:
        reps, rep_keys = [], []
        for i in range(len(queries)):
            stop = reps.index(hits[i]) + 1 if hits[i] != i else len(reps)
            total[i] = stop
            same[i] = sum(1 for k in rep_keys[:stop] if k == keys_q[i])
            if hits[i] == i:
                reps.append(i)
                rep_keys.append(keys_q[i])
    else:
        keys_c = np.asarray(keys_c)
        for i in range(len(queries)):
            stop = hits[i] + 1 if hits[i] >= 0 else len(candidates)
            total[i] = stop
            same[i] = int(np.count_nonzero(keys_c[:stop] == keys_q[i]))
    return same, total - same


def price_pairs(pairs, limit: int, rng) -> tuple[float, int]:
    """Mean CPU seconds of one naive fit over a random sample of (candidate, query) pairs."""
    if not pairs:
        return 0.0, 0
    chosen = [pairs[k] for k in rng.choice(len(pairs), min(limit, len(pairs)), replace=False)]
    matcher = CDVAE.matcher()
    start = time.process_time()
    for c, q in chosen:
        _fit(matcher, c, q, False)
    return (time.process_time() - start) / len(chosen), len(chosen)


def random_pairs(queries, candidates, keys_q, keys_c, same: bool, count: int, rng):
    """Random (candidate, query) pairs with equal (same) or unequal reduced formula."""
    out, by_key = [], {}
    for j, k in enumerate(keys_c):
        by_key.setdefault(k, []).append(j)
    tries = 0
    while len(out) < count and tries < 50 * count:
        tries += 1
        i = int(rng.integers(len(queries)))
        if same:
            options = [j for j in by_key.get(keys_q[i], []) if candidates[j] is not queries[i]]
            if options:
                out.append((candidates[options[int(rng.integers(len(options)))]], queries[i]))
        else:
            j = int(rng.integers(len(candidates)))
            if keys_c[j] != keys_q[i]:
                out.append((candidates[j], queries[i]))
    return out


# ---------------------------------------------------------------------- one size
def run(n: int, references, others, test_split, args) -> dict:
    rng = np.random.default_rng(args.seed + n)
    samples = make_samples(n, references, others, rng)
    res: dict = {"samples": n, "references": len(references)}
    print(f"\n== {n} samples vs {len(references)} references")

    def step(name, fn, *a, **k):
        value, cpu, wall = timed(fn, *a, **k)
        res[name] = {"cpu_s": round(cpu, 2), "wall_s": round(wall, 2)}
        print(f"{name:28s} cpu {cpu:8.2f} s   wall {wall:8.2f} s")
        return value

    step("validity", lambda: (structural_validity(samples), compositional_validity(samples),
                              bond_validation_rate(samples)))
    dup = step("uniqueness", first_matches, samples, None, CDVAE, 1, False)
    hit = step("novelty", first_matches, samples, references, CDVAE, 1, False)
    step("novelty_score", novelty_scores, samples, references)
    subset = [samples[k] for k in rng.choice(n, min(n, args.fingerprint_sample), replace=False)]
    if args.full_fingerprints:
        subset = samples
    step("crystalnn_subset", crystalnn_fingerprints, subset, 1, False)
    scale = n / len(subset)
    res["crystalnn_scaled_cpu_s"] = round(res["crystalnn_subset"]["cpu_s"] * scale, 1)
    res["crystalnn_measured_on"] = len(subset)
    if n <= args.evaluate_max:
        step("evaluate_no_fingerprints", evaluate, samples, test_split, references,
             with_fingerprints=False, progress=False)
    unique, novel = dup == np.arange(n), hit < 0
    res["uniqueness_share"], res["novelty_share"] = float(unique.mean()), float(novel.mean())
    print(f"uniqueness {unique.mean():.3f}, novelty {novel.mean():.3f}")

    # naive: exact call counts, priced per stratum
    keys_s = [formula_key(s) for s in samples]
    keys_r = [formula_key(s) for s in references]
    u_same, u_diff = naive_calls(samples, None, dup, keys_s, None)
    n_same, n_diff = naive_calls(samples, references, hit, keys_s, keys_r)
    prices, priced_on = {}, {}
    for name, candidates, keys_c in (("uniqueness", samples, keys_s),
                                     ("novelty", references, keys_r)):
        for same in (True, False):
            stratum = f"{name}_{'same' if same else 'other'}_formula"
            pairs = random_pairs(samples, candidates, keys_s, keys_c, same, args.price_pairs,
                                 rng)
            prices[stratum], priced_on[stratum] = price_pairs(pairs, args.price_pairs, rng)
    calls = {"uniqueness_same_formula": int(u_same.sum()),
             "uniqueness_other_formula": int(u_diff.sum()),
             "novelty_same_formula": int(n_same.sum()),
             "novelty_other_formula": int(n_diff.sum())}

    def estimate(name, same_calls, other_calls):
        return float((same_calls * prices[f"{name}_same_formula"]
                      + other_calls * prices[f"{name}_other_formula"]).sum())

    naive_u, naive_n = estimate("uniqueness", u_same, u_diff), estimate("novelty", n_same, n_diff)
    fast = res["uniqueness"]["cpu_s"] + res["novelty"]["cpu_s"]
    res["naive_estimate"] = {
        "calls": calls, "cpu_per_call_s": prices, "priced_on_pairs": priced_on,
        "uniqueness_cpu_s": round(naive_u, 1), "novelty_cpu_s": round(naive_n, 1),
    }
    res["speedup_uniqueness_novelty"] = round((naive_u + naive_n) / max(fast, 1e-9), 1)
    print(f"naive estimate: uniqueness {naive_u:.0f} s + novelty {naive_n:.0f} s CPU "
          f"({sum(calls.values()):,} fit calls); fast {fast:.1f} s -> "
          f"{res['speedup_uniqueness_novelty']}x")

    # naive in full for random queries: identical decisions, and a check of the estimate
    picked_n = np.sort(rng.choice(n, min(n, args.check_novelty), replace=False))
    (naive_hits, cpu_n, _) = timed(lambda: [naive_first_matches([samples[i]], references)[0]
                                            for i in picked_n])
    predicted_n = estimate("novelty", n_same[picked_n], n_diff[picked_n])
    reps = np.nonzero(unique)[0]
    picked_u = np.sort(rng.choice(n, min(n, args.check_uniqueness), replace=False))
    matcher = CDVAE.matcher()

    def naive_unique(i):  # all earlier representatives, in order, plain fit
        return next((int(r) for r in reps[reps < i] if _fit(matcher, samples[r], samples[i],
                                                             False)), int(i))

    (naive_dups, cpu_u, _) = timed(lambda: [naive_unique(i) for i in picked_u])
    predicted_u = estimate("uniqueness", u_same[picked_u], u_diff[picked_u])
    same_n = bool(np.array_equal(naive_hits, hit[picked_n]))
    same_u = bool(np.array_equal(naive_dups, dup[picked_u]))
    res["naive_check"] = {
        "novelty_queries": len(picked_n), "novelty_identical": same_n,
        "novelty_cpu_s": round(cpu_n, 1), "novelty_predicted_cpu_s": round(predicted_n, 1),
        "novelty_matches_in_check": int((np.asarray(naive_hits) >= 0).sum()),
        "uniqueness_queries": len(picked_u), "uniqueness_identical": same_u,
        "uniqueness_cpu_s": round(cpu_u, 1), "uniqueness_predicted_cpu_s": round(predicted_u, 1),
        "uniqueness_duplicates_in_check": int((np.asarray(naive_dups) != picked_u).sum()),
    }
    print(f"naive run on {len(picked_n)} novelty queries: identical {same_n}, cpu {cpu_n:.1f} s "
          f"(estimate {predicted_n:.1f} s); on {len(picked_u)} uniqueness queries: identical "
          f"{same_u}, cpu {cpu_u:.1f} s (estimate {predicted_u:.1f} s)")
    return res


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000])
    parser.add_argument("--fingerprint-sample", type=int, default=100,
                        help="CrystalNN timed on this many samples, scaled to N")
    parser.add_argument("--full-fingerprints", action="store_true")
    parser.add_argument("--price-pairs", type=int, default=800,
                        help="random pairs timed per stratum to price a naive fit call")
    parser.add_argument("--check-novelty", type=int, default=20,
                        help="queries run naively against all references")
    parser.add_argument("--check-uniqueness", type=int, default=100,
                        help="queries run naively against all earlier representatives")
    parser.add_argument("--evaluate-max", type=int, default=1000,
                        help="time the whole evaluate() call only up to this many samples")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "evaluate.json")
    args = parser.parse_args()

    load = os.getloadavg()
    mp20 = load_dataset("mp-20", progress=False)
    references, test_split = mp20.structures(), mp20.structures("test")
    others = [s for s in load_dataset("mpts-52", progress=False).structures() if len(s) <= 20]
    others += load_dataset("perov-5", progress=False).structures()
    others += load_dataset("carbon-24", progress=False).structures()
    result = {"command": "nice -n 10 python bench/evaluate.py " + " ".join(sys.argv[1:]),
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                          "load_average_at_start": [round(x, 2) for x in load]},
              "note": "CPU seconds of this process are the comparable figure: two training "
                      "jobs shared the CPUs, so wall times are inflated.",
              "runs": []}
    for n in args.sizes:  # JSON rewritten after each size: a long run keeps what it has
        result["runs"].append(run(n, references, others, test_split, args))
        result["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
        with atomic_path(args.out) as tmp:
            tmp.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
