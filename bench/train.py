"""Training throughput on this machine: crystals/s for fp32 and bf16 autocast, and the share
of the fp32 matmul roof that a training step reaches (FLOPs counted by torch).

    python bench/train.py --config configs/perov5.yaml --steps 20
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from autoperi.config import Config  # noqa: E402
from autoperi.data.datasets import training_dataset  # noqa: E402
from autoperi.flow.losses import training_losses  # noqa: E402
from autoperi.flow.model import FlowModel  # noqa: E402
from autoperi.train import batch_indices, data_stats, native_bf16  # noqa: E402


def matmul_roof(dtype: torch.dtype, size: int = 1024, repeats: int = 10) -> float:
    """Best GFLOP/s of a square matmul (one thread)."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def step_time(model, dataset, config, precision: str, steps: int) -> tuple[float, float]:
    """(median seconds per step, FLOPs per step) for one precision."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    train_idx = dataset.indices("train")
    times, flops = [], 0.0
    for step in range(steps + 2):
        batch = dataset.crystals.select(
            batch_indices(train_idx, step, config.train.batch_size, 0).tolist()
        ).to("cpu", torch.float32)
        counter = FlopCounterMode(display=False) if step == 0 else None
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            if counter:
                with counter:
                    losses = training_losses(model, batch, config.flow, 0.2,
                                             torch.Generator().manual_seed(step))
                    losses["loss"].backward()
            else:
                losses = training_losses(model, batch, config.flow, 0.2,
                                         torch.Generator().manual_seed(step))
                losses["loss"].backward()
        optimizer.step()
        optimizer.zero_grad()
        if counter:
            flops = counter.get_total_flops()
        elif step >= 2:  # skip warm-up steps
            times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2], flops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/perov5.yaml")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = Config.load(args.config)
    dataset = training_dataset(config.data)
    torch.manual_seed(0)
    model = FlowModel(config.model, data_stats(dataset, config))
    roof32, roof16 = matmul_roof(torch.float32), matmul_roof(torch.bfloat16)
    rows = {}
    for precision in ("fp32", "bf16"):
        seconds, flops = step_time(model, dataset, config, precision, args.steps)
        rows[precision] = {
            "seconds_per_step": seconds,
            "crystals_per_s": config.train.batch_size / seconds,
            "gflop_per_step": flops / 1e9,
            "achieved_gflops": flops / seconds / 1e9,
            "share_of_fp32_matmul_roof": flops / seconds / 1e9 / roof32,
        }
    result = {
        "config": args.config, "batch_size": config.train.batch_size,
        "matmul_roof_gflops": {"fp32": roof32, "bf16": roof16},
        "native_bf16": native_bf16(torch.device("cpu")),  # training falls back to fp32 if not
        "bf16_speedup": rows["fp32"]["seconds_per_step"] / rows["bf16"]["seconds_per_step"],
        "rows": rows,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
                   "1 thread",
    }
    print(json.dumps(result, indent=1))
    out = Path(args.out) / f"train_{Path(args.config).stem}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
