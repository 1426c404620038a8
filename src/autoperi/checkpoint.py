"""Model folders and training checkpoints: safetensors weights + JSON/YAML beside them.

Nothing here unpickles: weights, optimizer moments and EMA are tensors in safetensors files,
everything else is JSON. Writes go through `atomic_path`, so a killed run leaves either the
previous checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from autoperi.atomic import atomic_path
from autoperi.config import Config
from autoperi.flow.model import DataStats, FlowModel

PRETRAINED = ("mp-20", "perov-5", "carbon-24")
DEFAULT_MODEL = "mp-20"


def save_model(model: FlowModel, config: Config, folder: str | Path,
               state: dict[str, torch.Tensor] | None = None, info: dict | None = None) -> Path:
    """Write a self-contained model folder (weights, config, data statistics, version)."""
    from autoperi import __version__

    folder = Path(folder)
    weights = state if state is not None else model.state_dict()
    with atomic_path(folder, is_dir=True) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()},
                  str(tmp / "model.safetensors"))
        config.save(tmp / "config.yaml")
        (tmp / "stats.json").write_text(json.dumps(model.stats.to_dict(), indent=1))
        (tmp / "info.json").write_text(json.dumps({"version": __version__, **(info or {})},
                                                  indent=1))
    return folder


def resolve_model_path(name_or_path: str | Path | None) -> Path:
    """A shipped model's folder by name, or a user's model folder."""
    name = str(name_or_path or DEFAULT_MODEL)
    if name in PRETRAINED:
        return Path(str(resources.files("autoperi") / "pretrained" / name))
    path = Path(name)
    if (path / "model").is_dir() and not (path / "model.safetensors").exists():
        path = path / "model"  # a training run folder
    if not (path / "model.safetensors").exists():
        raise ValueError(f"{name!r} is neither a shipped model ({', '.join(PRETRAINED)}) nor a "
                         "folder with model.safetensors")
    return path


def load_model(name_or_path: str | Path | None = None,
               device: str | torch.device = "cpu") -> tuple[FlowModel, Config]:
    """Load a shipped model ("mp-20", "perov-5", "carbon-24") or a model folder."""
    folder = resolve_model_path(name_or_path)
    config = Config.load(folder / "config.yaml")
    stats = DataStats.from_dict(json.loads((folder / "stats.json").read_text()))
    model = FlowModel(config.model, stats)
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    return model.to(device).eval(), config


# ---------------------------------------------------------------------- training state
def init_weights(model: FlowModel, name_or_path: str | Path) -> None:
    """Load a model folder's weights into `model` in place (train.init_from); ValueError
    naming the folder when its architecture or element vocabulary differs."""
    source, _ = load_model(name_or_path)
    weights, own = source.state_dict(), model.state_dict()
    wrong = sorted(k for k in set(own) | set(weights)
                   if k not in weights or k not in own or weights[k].shape != own[k].shape)
    if wrong or source.stats.vocab != model.stats.vocab:
        what = f"weights {wrong[:3]}" if wrong else "element vocabulary"
        raise ValueError(f"train.init_from: {resolve_model_path(name_or_path)} does not fit "
                         f"this model (its {what} differ); use the model section and data "
                         "it was trained with")
    model.load_state_dict(weights)


def save_training_state(folder: Path, model: torch.nn.Module, ema: dict[str, torch.Tensor],
                        optimizer: torch.optim.Optimizer, step: int, extra: dict) -> None:
    """Everything needed to continue training bit for bit."""
    opt_state = optimizer.state_dict()
    tensors = {f"{idx}.{key}": value for idx, slots in opt_state["state"].items()
               for key, value in slots.items()}
    with atomic_path(folder, is_dir=True) as tmp:
        save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()},
                  str(tmp / "model.safetensors"))
        save_file({k: v.contiguous() for k, v in ema.items()}, str(tmp / "ema.safetensors"))
        save_file({k: v.contiguous() for k, v in tensors.items()},
                  str(tmp / "optimizer.safetensors"))
        (tmp / "state.json").write_text(json.dumps(
            {"step": step, "param_groups": opt_state["param_groups"], **extra}, indent=1))


def load_training_state(folder: Path, model: torch.nn.Module,
                        optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Restore model and optimizer in place; returns (ema weights, state.json content)."""
    state = json.loads((folder / "state.json").read_text())
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    slots: dict[int, dict] = {}
    for key, value in load_file(str(folder / "optimizer.safetensors")).items():
        idx, name = key.split(".", 1)
        slots.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": slots, "param_groups": state["param_groups"]})
    return load_file(str(folder / "ema.safetensors")), state
