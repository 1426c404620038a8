"""Training: a tiny real run, bit-exact resume, two-process DDP on CPU, model folders."""

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from autoperi import checkpoint
from autoperi.checkpoint import load_model
from autoperi.config import Config
from autoperi.train import batch_indices, learning_rate, train

SAMPLE = Path(__file__).parent / "data" / "mp20_sample.csv"
TINY = {
    "data.dataset": str(SAMPLE), "data.properties": "band_gap",
    "data.energy_property": "formation_energy_per_atom",
    "model.hidden_dim": 16, "model.num_layers": 1, "train.batch_size": 8,
    "train.steps": 6, "train.warmup_steps": 2, "train.lr": 1e-3, "train.log_every": 2,
    "train.val_every": 3, "train.checkpoint_every": 3,
}


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOPERI_CACHE", str(tmp_path / "cache"))


def config(**extra) -> Config:
    return Config().override({**TINY, **extra})


def test_tiny_run_writes_a_loadable_model(tmp_path):
    run = train(config(), tmp_path / "run", progress=False)
    log = (run / "train_log.csv").read_text().splitlines()
    assert log[0].startswith("step,lr") and len(log) == 1 + 3  # steps 2, 4, 6
    assert log[-1].split(",")[-1] != ""  # validation loss at the last step
    model, cfg = load_model(run / "model")
    assert cfg == config()
    assert model.stats.conditions == ("band_gap",)
    assert set(model.stats.heads) == {"band_gap", "formation_energy_per_atom"}
    # Loading a run folder resolves to its model.
    assert checkpoint.resolve_model_path(run) == run / "model"
    with pytest.raises(ValueError, match="not empty"):
        train(config(), run, progress=False)


def test_resume_continues_bit_for_bit(tmp_path, monkeypatch):
    straight = train(config(), tmp_path / "straight", progress=False)

    # The module, not the function `autoperi.train` that the package exports under its name.
    train_module = importlib.import_module("autoperi.train")

    real_write = train_module._CsvLog.write

    def write_then_die(self, row):
        real_write(self, row)
        if row["step"] == 4:
            raise KeyboardInterrupt  # killed after logging step 4; last checkpoint: step 3

    monkeypatch.setattr(train_module._CsvLog, "write", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(config(), tmp_path / "resumed", progress=False)
    monkeypatch.setattr(train_module._CsvLog, "write", real_write)
    resumed = train(config(), tmp_path / "resumed", resume=True, progress=False)
    a = load_file(str(straight / "model" / "model.safetensors"))
    b = load_file(str(resumed / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # The interrupted log continued rather than restarting, without the step-4 row twice.
    steps = [line.split(",")[0] for line in (resumed / "train_log.csv").read_text().splitlines()]
    assert steps == ["step", "2", "4", "6"]


def test_resume_upgrades_an_old_log_header(tmp_path):
    from autoperi.train import _CsvLog

    log = tmp_path / "train_log.csv"
    log.write_text("step,lr,train_loss,val_loss\n2,0.1,3.5,4.0\n")
    writer = _CsvLog(log, resume_step=2)
    writer.write({"step": 4, "lr": 0.05, "train_loss": 3.0})
    header, first, second = log.read_text().splitlines()
    assert header.split(",") == list(_CsvLog.FIELDS)
    row = dict(zip(_CsvLog.FIELDS, first.split(",")))
    assert row["train_loss"] == "3.5" and row["val_loss"] == "4.0"
    assert second.startswith("4,0.05")


def test_bf16_autocast_trains(tmp_path):
    run = train(config(**{"train.precision": "bf16", "train.steps": 2}), tmp_path / "r",
                progress=False)
    weights = load_file(str(run / "model" / "model.safetensors"))
    assert all(torch.isfinite(v).all() for v in weights.values())
    used = json.loads((run / "model" / "info.json").read_text())["precision"]
    native = importlib.import_module("autoperi.train").native_bf16(torch.device("cpu"))
    assert used == ("bf16" if native else "fp32")
    with pytest.raises(ValueError, match="precision"):
        train(config(**{"train.precision": "fp8"}), tmp_path / "bad", progress=False)


@pytest.mark.parametrize("native", [True, False])
def test_bf16_only_where_native(native, monkeypatch, caplog):
    # emulated bf16 (AVX2-only CPUs) is several times slower than fp32: fall back, and say so
    train_module = importlib.import_module("autoperi.train")

    monkeypatch.setattr(train_module, "native_bf16", lambda device: native)
    with caplog.at_level("WARNING", logger="autoperi.train"):
        used = train_module.effective_precision("bf16", torch.device("cpu"))
    assert used == ("bf16" if native else "fp32")
    assert ("no native bf16" in caplog.text) == (not native)
    assert train_module.effective_precision("fp32", torch.device("cpu")) == "fp32"


def test_auxiliary_losses_train_end_to_end(tmp_path):
    run = train(config(**{"flow.lambda_symmetry": 0.1, "flow.lambda_stability": 0.1,
                          "train.steps": 3}), tmp_path / "aux", progress=False)
    header, *rows = (run / "train_log.csv").read_text().splitlines()
    columns = header.split(",")
    last = dict(zip(columns, rows[-1].split(",")))
    assert float(last["train_symmetry"]) > 0 and float(last["train_stability"]) != 0
    assert last["val_loss"] != ""


def test_two_process_ddp_on_cpu(tmp_path):
    cfg = config(**{"train.steps": 3, "train.checkpoint_every": 3})
    cfg.save(tmp_path / "c.yaml")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "AUTOPERI_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           "--master_port=29533", "-m", "autoperi.cli", "train", str(tmp_path / "c.yaml"),
           "--out", str(tmp_path / "ddp"), "--device", "cpu"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    info = (tmp_path / "ddp" / "model" / "info.json").read_text()
    assert '"world_size": 2' in info
    assert done.stdout.count("model written") == 1  # one report, from rank 0


def test_schedule_and_batches():
    cfg = Config().override({"train.steps": 100, "train.warmup_steps": 10, "train.lr": 1.0})
    assert learning_rate(0, cfg) == pytest.approx(0.1)
    assert learning_rate(9, cfg) == pytest.approx(1.0)
    assert learning_rate(99, cfg) == pytest.approx(0.01, abs=1e-3)
    idx = torch.arange(20).numpy()
    epoch = [batch_indices(idx, s, 5, seed=0) for s in range(4)]
    assert sorted(sum((e.tolist() for e in epoch), [])) == list(range(20))  # one epoch
    halves = [batch_indices(idx, 1, 6, 0, rank=r, world=2) for r in (0, 1)]
    assert set(halves[0]).isdisjoint(halves[1]) and len(halves[0]) == 3


def test_oversampled_repeats_only_crystals_in_the_window():
    from autoperi.train import oversampled

    values = np.array([0.0, 1.5, np.nan, 1.4, 3.0, 1.6])
    train_idx = np.array([0, 1, 2, 3, 4])  # row 5 is not a training crystal
    out = oversampled(train_idx, values, 1.35, 1.65, 3)
    assert sorted(out.tolist()) == [0, 1, 1, 1, 2, 3, 3, 3, 4]
    assert np.array_equal(oversampled(train_idx, values, 1.35, 1.65, 1), train_idx)
    with pytest.raises(ValueError, match="oversample_factor"):
        oversampled(train_idx, values, 0, 1, 0)


def test_init_from_starts_from_a_model_folder(tmp_path):
    first = train(config(), tmp_path / "a", progress=False)
    frozen = {"train.lr": 0.0, "train.steps": 2, "train.seed": 7}
    started = train(config(**frozen, **{"train.init_from": str(first / "model")}),
                    tmp_path / "b", progress=False)
    fresh = train(config(**frozen), tmp_path / "c", progress=False)
    a, b, c = (load_file(str(r / "model" / "model.safetensors")) for r in (first, started, fresh))
    assert all(torch.equal(a[k], b[k]) for k in a)  # lr 0: the run keeps the weights it got
    assert not all(torch.equal(a[k], c[k]) for k in a)
    with pytest.raises(ValueError, match="does not fit"):
        train(config(**{"model.hidden_dim": 32, "train.init_from": str(first / "model")}),
              tmp_path / "d", progress=False)
