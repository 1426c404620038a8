"""Which graph should the generator use? Quality per compute of the dense in-cell graph
(all atom pairs + Fourier features) vs periodic radius graphs, on Perov-5.

Each variant trains the same small model for the same wall-clock budget on one thread, then
reports edges per crystal, seconds per step, steps reached, validation loss and CSP match
rate on held-out test crystals.

    python bench/graph_choice.py --minutes 4 --num-test 200
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from autoperi.config import Config  # noqa: E402
from autoperi.data.datasets import load_dataset  # noqa: E402
from autoperi.eval.match import csp_rms, csp_summary  # noqa: E402
from autoperi.flow.losses import training_losses  # noqa: E402
from autoperi.flow.model import FlowModel  # noqa: E402
from autoperi.generate import predict_structures  # noqa: E402
from autoperi.train import batch_indices, data_stats, learning_rate, validation_loss  # noqa: E402

VARIANTS = {
    "dense (all pairs in cell)": {"model.graph": "dense"},
    "radius 6 Å, 24 neighbours": {"model.graph": "radius", "model.cutoff": 6.0,
                                  "model.max_neighbors": 24},
    "radius 8 Å, 48 neighbours": {"model.graph": "radius", "model.cutoff": 8.0,
                                  "model.max_neighbors": 48},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=4.0)
    parser.add_argument("--num-test", type=int, default=200)
    parser.add_argument("--csp-steps", type=int, default=20)
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    torch.set_num_threads(1)
    base = Config.load("configs/perov5.yaml").override({
        "model.hidden_dim": 64, "model.num_layers": 3, "train.batch_size": 64,
        "train.steps": 100000, "train.warmup_steps": 100, "train.lr": 1e-3})
    dataset = load_dataset("perov-5", progress=False)
    test = dataset.structures("test")[: args.num_test]
    val_idx = dataset.indices("val")[:256]
    val = dataset.crystals.select(val_idx.tolist())
    rows = []
    for label, overrides in VARIANTS.items():
        config = base.override(overrides)
        torch.manual_seed(0)
        model = FlowModel(config.model, data_stats(dataset, config))
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.train.lr)
        ema = {k: v.detach().clone() for k, v in model.state_dict().items()}
        sample = dataset.crystals.select(list(range(64))).to("cpu", torch.float32)
        edges = model.encoder.build_graph(sample.frac_coords, sample.lattice,
                                          sample.num_atoms).num_edges / 64
        start, step = time.perf_counter(), 0
        while time.perf_counter() - start < args.minutes * 60:
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, config)
            idx = batch_indices(dataset.indices("train"), step, 64, 0)
            batch = dataset.crystals.select(idx.tolist()).to("cpu", torch.float32)
            losses = training_losses(model, batch, config.flow, 0.2,
                                     torch.Generator().manual_seed(step))
            optimizer.zero_grad()
            losses["loss"].backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            with torch.no_grad():
                for k, v in model.state_dict().items():
                    ema[k].mul_(0.99).add_(v, alpha=0.01)
            step += 1
        seconds = time.perf_counter() - start
        val_loss = validation_loss(model, ema, val, config)
        model.load_state_dict(ema)
        model.eval()
        predicted = predict_structures(test, model, 1, args.csp_steps, progress=False)
        summary = csp_summary(csp_rms(predicted, test)[:, None])
        rows.append({"graph": label, "edges_per_crystal": edges, "steps": step,
                     "seconds_per_step": seconds / step, "val_loss": val_loss,
                     "csp_match_rate": summary["match_rate"], "csp_rmse": summary["rmse"]})
        print(json.dumps(rows[-1]), flush=True)
    out = Path(args.out) / "graph_choice.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"minutes_per_variant": args.minutes, "test": len(test),
                               "csp_steps": args.csp_steps, "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
