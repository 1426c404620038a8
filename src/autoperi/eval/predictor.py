"""An independent property predictor for judging targeted generation.

Deliberately unlike the generator's heads: no graph, no shared weights: an MLP on
hand-made descriptors (Magpie composition statistics + cell descriptors), trained on the
reference data. Saved as safetensors + JSON.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pymatgen.core import Structure
from safetensors.torch import load_file, save_file
from torch import nn

from autoperi.atomic import atomic_path
from autoperi.data.features import composition_features


def descriptors(structures: Sequence[Structure]) -> torch.Tensor:
    """[S, 5F + 9]: Magpie composition statistics, then volume per atom, density, sorted
    log lattice lengths, |cos| of sorted angles, atoms per cell and number of elements."""
    numbers = torch.tensor([z for s in structures for z in s.atomic_numbers])
    owner = torch.repeat_interleave(torch.arange(len(structures)),
                                    torch.tensor([len(s) for s in structures]))
    comp = composition_features(numbers, owner, len(structures))
    cell = []
    for s in structures:
        lengths = np.sort(np.log(s.lattice.abc))
        angles = np.sort(np.abs(np.cos(np.radians(s.lattice.angles))))
        cell.append([s.volume / len(s), s.density, *lengths, *angles, len(s),
                     len(s.composition.elements)])
    return torch.cat([comp, torch.tensor(cell, dtype=torch.float32)], dim=1)


@dataclass
class PropertyPredictor:
    """MLP on `descriptors`, for one property."""

    name: str
    network: nn.Module
    x_mean: torch.Tensor
    x_std: torch.Tensor
    y_mean: float
    y_std: float
    metrics: dict

    @staticmethod
    def build(dim: int, hidden: int = 256) -> nn.Module:
        return nn.Sequential(nn.Linear(dim, hidden), nn.SiLU(), nn.Dropout(0.1),
                             nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 1))

    @staticmethod
    def fit(name: str, train: Sequence[Structure], val: Sequence[Structure],
            epochs: int = 300, seed: int = 0, loss: str = "l1") -> PropertyPredictor:
        """Train on structures with properties[name]; keeps the epoch with the best val MAE
        ("l1" loss) or val MSE ("l2"). Use "l2" for zero-inflated targets such as Perov-5's
        direct gap (96 % zeros): L1 learns the conditional median, which is 0 everywhere."""
        if loss not in ("l1", "l2"):
            raise ValueError(f"loss must be 'l1' or 'l2', got {loss!r}")
        criterion = nn.functional.l1_loss if loss == "l1" else nn.functional.mse_loss
        torch.manual_seed(seed)
        xt, yt = _xy(train, name)
        xv, yv = _xy(val, name)
        # A floor on the scale: a feature constant in the data (e.g. all-cubic angles) must
        # not turn a small deviation in a generated crystal into a huge input.
        x_mean, x_std = xt.mean(0), xt.std(0).clamp_min(1e-2)
        y_mean, y_std = float(yt.mean()), float(yt.std().clamp_min(1e-6))
        net = PropertyPredictor.build(xt.shape[1])
        opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
        xs, ys = _standardize(xt, x_mean, x_std), (yt - y_mean) / y_std
        best, best_state = float("inf"), None
        g = torch.Generator().manual_seed(seed)
        for _ in range(epochs):
            net.train()
            for idx in torch.randperm(len(xs), generator=g).split(128):
                value = criterion(net(xs[idx]).squeeze(1), ys[idx])
                opt.zero_grad()
                value.backward()
                opt.step()
            sched.step()
            net.eval()
            with torch.no_grad():
                pred = net(_standardize(xv, x_mean, x_std)).squeeze(1) * y_std + y_mean
            score = float(criterion(pred, yv))
            if score < best:
                best, best_state = score, {k: v.clone() for k, v in net.state_dict().items()}
        net.load_state_dict(best_state)
        net.eval()
        with torch.no_grad():
            pred = net(_standardize(xv, x_mean, x_std)).squeeze(1) * y_std + y_mean
        metrics = {"loss": loss, "val_mae": float((pred - yv).abs().mean()),
                   "val_mae_of_mean": float((yv - y_mean).abs().mean()),
                   "train_size": len(xt), "val_size": len(xv)}
        return PropertyPredictor(name, net, x_mean, x_std, y_mean, y_std, metrics)

    @torch.no_grad()
    def predict(self, structures: Sequence[Structure]) -> np.ndarray:
        x = _standardize(descriptors(structures), self.x_mean, self.x_std)
        return (self.network(x).squeeze(1) * self.y_std + self.y_mean).numpy()

    def save(self, folder: str | Path) -> None:
        with atomic_path(folder, is_dir=True) as tmp:
            save_file({**{f"net.{k}": v for k, v in self.network.state_dict().items()},
                       "x_mean": self.x_mean, "x_std": self.x_std},
                      str(tmp / "predictor.safetensors"))
            (tmp / "predictor.json").write_text(json.dumps({
                "name": self.name, "y_mean": self.y_mean, "y_std": self.y_std,
                "metrics": self.metrics}, indent=1))

    @staticmethod
    def load(folder: str | Path) -> PropertyPredictor:
        folder = Path(folder)
        meta = json.loads((folder / "predictor.json").read_text())
        tensors = load_file(str(folder / "predictor.safetensors"))
        net = PropertyPredictor.build(tensors["x_mean"].shape[0])
        net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
        net.eval()
        return PropertyPredictor(meta["name"], net, tensors["x_mean"], tensors["x_std"],
                                 meta["y_mean"], meta["y_std"], meta["metrics"])


def _standardize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Standard scores clipped to +-6: bounded extrapolation far outside the training data."""
    return ((x - mean) / std).clamp(-6.0, 6.0)


def _xy(structures: Sequence[Structure], name: str) -> tuple[torch.Tensor, torch.Tensor]:
    kept = [s for s in structures if np.isfinite(float((s.properties or {}).get(name, np.nan)))]
    if len(kept) < 10:
        raise ValueError(f"only {len(kept)} structures have property {name!r}")
    return descriptors(kept), torch.tensor([float(s.properties[name]) for s in kept])


SHIPPED = Path(__file__).parents[1] / "pretrained" / "predictors"


def shipped_predictors(dataset: str) -> dict[str, PropertyPredictor]:
    """The independent predictors shipped for a bundled dataset, {property: predictor}
    (empty for datasets without any)."""
    folder = SHIPPED / dataset
    if not folder.is_dir():
        return {}
    return {p.name: PropertyPredictor.load(p) for p in sorted(folder.iterdir())
            if (p / "predictor.json").exists()}
