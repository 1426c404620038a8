"""The training loop: AdamW, warm-up + cosine learning rate, gradient clipping, EMA weights,
optional bf16 autocast, DDP through torchrun (gloo on CPU, nccl on GPU), CSV logs,
validation, atomic checkpoints and bit-exact --resume.

Every step's randomness (batch order, times, prior samples) is a function of (seed, step,
rank), so a resumed run continues exactly as if it had never stopped.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from autoperi.checkpoint import (
    init_weights,
    load_training_state,
    save_model,
    save_training_state,
)
from autoperi.config import Config, parse_targets
from autoperi.data.crystal import CrystalBatch
from autoperi.data.datasets import CrystalDataset, training_dataset
from autoperi.data.features import PropertyScaler
from autoperi.flow.losses import training_losses
from autoperi.flow.model import DataStats, FlowModel
from autoperi.flow.priors import AtomCountPrior, LatticePrior

log = logging.getLogger(__name__)
LOSS_NAMES = ("loss", "frac", "lattice", "types", "recon", "property", "stability",
              "symmetry", "offpath")


def data_stats(dataset: CrystalDataset, config: Config) -> DataStats:
    """Vocabulary, scalers and priors from the training split (vocabulary: every element
    in the dataset, so held-out compositions can be asked for)."""
    train = dataset.crystals.select(dataset.indices("train").tolist())
    heads = tuple(dict.fromkeys(config.data.properties + ((config.data.energy_property,)
                                                          if config.data.energy_property else ())))
    missing = [p for p in heads if p not in train.properties]
    if missing:
        raise ValueError(f"properties {missing} are not in {config.data.dataset} "
                         f"(it has {', '.join(sorted(train.properties))})")
    return DataStats(
        vocab=tuple(sorted(set(dataset.crystals.atomic_numbers.tolist()))),
        conditions=tuple(config.data.properties),
        heads=heads,
        energy_property=config.data.energy_property,
        scaler=PropertyScaler.fit({p: train.properties[p] for p in heads}),
        lattice_prior=LatticePrior.fit(train.lattice, train.atomic_numbers, train.num_atoms),
        atom_count_prior=AtomCountPrior.fit(train.num_atoms),
    )


def learning_rate(step: int, config: Config) -> float:
    """Linear warm-up, then cosine decay to 1 % of the peak."""
    tc = config.train
    if step < tc.warmup_steps:
        return tc.lr * (step + 1) / tc.warmup_steps
    progress = (step - tc.warmup_steps) / max(1, tc.steps - tc.warmup_steps)
    return tc.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def batch_indices(train_idx: np.ndarray, step: int, batch_size: int, seed: int,
                  rank: int = 0, world: int = 1) -> np.ndarray:
    """The crystals of `step` for this rank: epochs are seeded permutations, a global batch
    is `batch_size` crystals split across ranks."""
    per_epoch = max(1, len(train_idx) // batch_size)
    epoch, position = divmod(step, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(len(train_idx))
    chosen = order[position * batch_size:(position + 1) * batch_size]
    return train_idx[chosen[rank::world]]


def oversampled(train_idx: np.ndarray, values: np.ndarray, low: float, high: float,
                factor: int) -> np.ndarray:
    """train_idx with the crystals whose value lies in [low, high] repeated `factor` times
    (NaN values never count as inside)."""
    if factor < 1:
        raise ValueError(f"oversample_factor must be >= 1, got {factor}")
    inside = train_idx[(values[train_idx] >= low) & (values[train_idx] <= high)]
    return np.concatenate([train_idx] + [inside] * (factor - 1))


def train(config: Config, out: str | Path, resume: bool = False,
          device: str | None = None, progress: bool = True) -> Path:
    """Train a flow model; returns the run folder (model in RUN/model)."""
    out = Path(out)
    rank, world = _init_distributed()
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    torch.set_num_threads(config.train.num_threads)
    torch.manual_seed(config.train.seed)

    if rank != 0:
        dist.barrier()  # rank 0 builds the dataset cache first; the others read it
    dataset = training_dataset(config.data, progress=progress and rank == 0)
    if rank == 0 and world > 1:
        dist.barrier()
    stats = data_stats(dataset, config)
    model = FlowModel(config.model, stats)
    checkpoint = out / "checkpoint"
    resuming = resume and (checkpoint / "state.json").exists()
    if config.train.init_from and not resuming:
        init_weights(model, config.train.init_from)
    model = model.to(device)
    ddp_model = (torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.train.lr,
                                  weight_decay=config.train.weight_decay)
    ema = {k: v.detach().clone() for k, v in model.state_dict().items()}
    start = 0
    if resuming:
        ema, state = load_training_state(checkpoint, model, optimizer)
        start = state["step"]
        log.info("resuming from step %d", start)
    elif rank == 0 and out.exists() and any(out.iterdir()) and not resume:
        raise ValueError(f"{out} is not empty; pass --resume to continue or choose another folder")
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        config.save(out / "config.yaml")

    train_idx = dataset.indices("train")
    if config.train.oversample:
        (name, (low, high)), = parse_targets([config.train.oversample]).items()
        if name not in dataset.crystals.properties:
            raise ValueError(f"train.oversample: the dataset has no property {name!r}")
        values = dataset.crystals.properties[name].double().numpy()
        train_idx = oversampled(train_idx, values, low, high, config.train.oversample_factor)
    val_idx = dataset.indices("val")[:512]
    val = dataset.crystals.select(val_idx.tolist())
    val_symmetry = dataset.symmetry(val_idx) if config.flow.lambda_symmetry > 0 else None
    logger = _CsvLog(out / "train_log.csv", resume_step=start) if rank == 0 else None
    precision = effective_precision(config.train.precision, device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    bar = tqdm(range(start, config.train.steps), initial=start, total=config.train.steps,
               disable=not progress or rank != 0, desc="training")
    t_start, crystals_seen = time.perf_counter(), 0
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, config)
        idx = batch_indices(train_idx, step, config.train.batch_size, config.train.seed,
                            rank, world)
        batch = dataset.crystals.select(idx.tolist()).to(device, torch.float32)
        generator = torch.Generator().manual_seed(
            (config.train.seed * 1_000_003 + step) * 64 + rank)
        model.train()
        symmetry = dataset.symmetry(idx) if config.flow.lambda_symmetry > 0 else None
        with autocast:
            losses = training_losses(ddp_model, batch, config.flow,
                                     config.model.condition_dropout, generator, symmetry)
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.train.grad_clip)
        optimizer.step()
        _update_ema(ema, model, config.train.ema_decay, step)
        crystals_seen += len(batch)
        done = step + 1
        if rank == 0 and (done % config.train.log_every == 0 or done == config.train.steps):
            row = {"step": done, "lr": learning_rate(step, config),
                   "grad_norm": float(grad_norm),
                   "crystals_per_s": crystals_seen * world / (time.perf_counter() - t_start),
                   **{f"train_{k}": float(losses[k].detach()) for k in LOSS_NAMES}}
            if done % config.train.val_every == 0 or done == config.train.steps:
                row["val_loss"] = validation_loss(model, ema, val, config, val_symmetry)
            logger.write(row)
            bar.set_postfix(loss=f"{row['train_loss']:.3f}")
        if rank == 0 and (done % config.train.checkpoint_every == 0
                          or done == config.train.steps):
            save_training_state(checkpoint, model, ema, optimizer, done, {})
    if rank == 0:
        elapsed = time.perf_counter() - t_start
        save_model(model, config, out / "model", state=ema, info={
            "steps": config.train.steps, "train_crystals": int(len(np.unique(train_idx))),
            "dataset_summary": dataset.summary(), "seconds_this_session": round(elapsed, 1),
            "world_size": world, "precision": precision,
        })
    if world > 1:
        dist.barrier()
    return out


@torch.no_grad()
def validation_loss(model: FlowModel, ema: dict, val: CrystalBatch, config: Config,
                    symmetry: tuple | None = None) -> float:
    """Mean weighted loss of the EMA weights on validation crystals (fixed noise)."""
    live = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(ema)
    model.eval()
    generator = torch.Generator().manual_seed(12345)
    device = next(model.parameters()).device
    total = 0.0
    starts = torch.cumsum(symmetry[1], 0) - symmetry[1] if symmetry is not None else None
    chunks = [list(range(k, min(k + 128, len(val)))) for k in range(0, len(val), 128)]
    for chunk in chunks:
        batch = val.select(chunk).to(device, torch.float32)
        sym = None
        if symmetry is not None:
            ops, counts = symmetry
            sym = (torch.cat([ops[starts[k]:starts[k] + counts[k]] for k in chunk]),
                   counts[chunk])
        total += float(training_losses(model, batch, config.flow, 0.0, generator, sym)["loss"])
    model.load_state_dict(live)
    return total / max(1, len(chunks))


def _update_ema(ema: dict, model: torch.nn.Module, decay: float, step: int) -> None:
    decay = min(decay, (1 + step) / (10 + step))
    with torch.no_grad():
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                ema[k].mul_(decay).add_(v.detach(), alpha=1 - decay)
            else:
                ema[k].copy_(v)


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bf16 matmuls in hardware. CPUs without AVX-512 or AMX
    (e.g. AVX2-only AMD EPYC) emulate bf16: measured there, a bf16-autocast training step is
    several times slower than fp32 (BENCHMARKS.md, "Training throughput")."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return True  # other backends: trust the user's choice


def effective_precision(precision: str, device: torch.device) -> str:
    """The precision a run uses: bf16 only where the device has native bf16, else fp32
    (with a warning)."""
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"train.precision must be 'fp32' or 'bf16', got {precision!r}")
    if precision == "bf16" and not native_bf16(device):
        log.warning("train.precision=bf16: this %s has no native bf16 (emulated bf16 is "
                    "several times slower); training in fp32", device.type)
        return "fp32"
    return precision


def is_main_process() -> bool:
    """True on the process that writes files and reports: rank 0 of a torchrun job, or the
    only process."""
    return not dist.is_initialized() or dist.get_rank() == 0


def _init_distributed() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


class _CsvLog:
    """train_log.csv (always) and TensorBoard event files (when tensorboard is installed)."""

    FIELDS = ("step", "lr", "grad_norm", "crystals_per_s",
              *(f"train_{k}" for k in LOSS_NAMES), "val_loss")

    def __init__(self, path: Path, resume_step: int = 0):
        """resume_step > 0: keep the rows up to that step (the checkpoint the run resumes
        from) under the current columns; rows logged after it by the interrupted process are
        dropped, since the resumed run logs those steps again."""
        self.path = path
        if resume_step == 0 or not path.exists():
            path.write_text(",".join(self.FIELDS) + "\n")
        else:
            rows = [r for r in csv.DictReader(path.open()) if int(r["step"]) <= resume_step]
            with path.open("w", newline="") as f:
                writer = csv.DictWriter(f, self.FIELDS, extrasaction="ignore")
                writer.writeheader()
                writer.writerows(rows)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.board = SummaryWriter(str(path.parent / "tensorboard"))
        except ImportError:
            self.board = None

    def write(self, row: dict) -> None:
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, self.FIELDS).writerow(row)
            f.flush()
        if self.board is not None:
            for key, value in row.items():
                if key != "step":
                    self.board.add_scalar(key, value, row["step"])
            self.board.flush()
        log.info("%s", json.dumps(row))
