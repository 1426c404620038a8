"""Configuration: frozen dataclasses whose defaults train something sensible.

A YAML file is a complete snapshot (every field); command lines override single fields with
dotted names (`--model.hidden_dim=256`). The resolved config is saved with every checkpoint
and output, so a run can be reproduced from its folder alone.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "perov-5"  # named dataset or a path read_structures understands
    properties: tuple[str, ...] = ()  # properties to condition on / predict
    energy_property: str = ""  # property the stability surrogate learns ("" = none)
    max_atoms: int = 60
    seed: int = 0  # split seed
    symprec: float = 0.1


@dataclass(frozen=True)
class ModelConfig:
    hidden_dim: int = 128
    num_layers: int = 4
    graph: str = "dense"  # "dense": all atom pairs in the cell; "radius": periodic radius graph
    cutoff: float = 6.0  # Å, radius graph only
    max_neighbors: int = 24  # radius graph only
    num_frequencies: int = 8  # Fourier features of fractional offsets per axis
    num_radial: int = 32  # radial basis functions of the shortest image distance
    lattice_aware: bool = True  # feed lattice invariants (Gram matrix) into every message
    element_features: bool = True  # add Magpie elemental features to atom embeddings
    lattice_latent_dim: int = 8  # rows of the d x 3 lattice-aware latent
    condition_dropout: float = 0.2  # classifier-free guidance: P(condition hidden) per property
    # how atom types flow (de novo): "gaussian": straight lines from Gaussian noise to one-hot
    # vectors; "masked": every atom starts hidden (a zero vector) and is revealed, as its
    # sampled element, at a random time (P(revealed by t) = t), so later atoms are drawn
    # knowing the earlier ones; "masked_gaussian": the masked reveals, but every atom's input
    # also carries its own Gaussian noise, fading as (1 - t) like the gaussian path's, which
    # tells atoms of one element apart (flow/paths.py)
    type_path: str = "gaussian"
    # masked path: hidden atoms show Gaussian noise of this scale (drawn once per atom)
    # instead of zeros, so that two hidden atoms close together can be told apart (0: zeros)
    hidden_noise: float = 0.0
    # sampling default: from t = 0.5 on, push apart atoms closer than this (Å; 0 = off). A
    # fact of the training data (a bit below its shortest real contacts), so it is kept with
    # the model; `autoperi sample/csp --clash-distance` overrides it
    clash_distance: float = 0.0
    # the same relative to covalent radii: push apart atoms i, j closer than
    # clash_scale * (r_i + r_j) (0 = off; both floors may be set, the larger acts). For
    # datasets whose shortest contacts depend on the elements; `--clash-scale` overrides it
    clash_scale: float = 0.0


@dataclass(frozen=True)
class FlowConfig:
    generate_types: bool = True  # de novo (types generated) vs CSP only (types given)
    csp_fraction: float = 0.5  # share of training crystals whose types are given
    lambda_frac: float = 1.0
    lambda_lattice: float = 1.0
    lambda_types: float = 1.0
    lambda_recon: float = 0.1  # periodic Chamfer of the predicted clean structure
    lambda_property: float = 1.0  # MAE of property heads
    lambda_stability: float = 0.0  # energy surrogate (energy head) on predicted clean crystals
    lambda_symmetry: float = 0.0  # predicted clean crystal vs its image under the target's ops
    # "independent": noise atom i flows to data atom i; "ot": the permutation (within
    # species when types are given) and common shift of shortest paths (flow/coupling.py)
    coupling: str = "independent"
    # off-path training: late states (t >= offpath_after) of a share offpath_share of the
    # crystals get their atoms displaced by offpath_sigma Å (Gaussian, mean-free); for them
    # the coordinate velocity loss is replaced by a type-aware periodic Chamfer of the
    # predicted clean crystal, weighted lambda_offpath (flow/losses.py): the model learns to
    # return strayed atoms; in a share offpath_pairs of those crystals one atom is also
    # carried 60-100 % of the way to another (two atoms heading for one site)
    lambda_offpath: float = 0.0
    offpath_sigma: float = 0.5
    offpath_share: float = 0.25
    offpath_after: float = 0.7
    offpath_pairs: float = 0.0


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 20000
    batch_size: int = 128
    lr: float = 1e-4
    weight_decay: float = 1e-3
    warmup_steps: int = 500
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    precision: str = "fp32"  # "fp32" or "bf16" (autocast where the device supports it)
    val_every: int = 500
    checkpoint_every: int = 1000
    log_every: int = 50
    seed: int = 0
    num_threads: int = 1
    # "name=low:high": crystals whose property lies in the window are seen
    # `oversample_factor` times per epoch (rare targets for conditional generation)
    oversample: str = ""
    oversample_factor: int = 1
    # a model folder or shipped model name whose weights start this run (fine-tuning on a
    # machine without the original checkpoint); optimizer, EMA and schedule start fresh.
    # Architecture and vocabulary must match the weights; model.type_path may differ (a
    # gaussian-type model fine-tunes into a masked one: hidden atoms are zero vectors).
    init_from: str = ""


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return _to_plain(dataclasses.asdict(self))

    def override(self, dotted: dict[str, str | object]) -> Config:
        """A copy with `section.field` values replaced (strings are parsed by field type)."""
        sections = {s.name: getattr(self, s.name) for s in dataclasses.fields(self)}
        for key, value in dotted.items():
            section, _, name = key.partition(".")
            if section not in sections or not name:
                raise ValueError(f"unknown config key {key!r}; use section.field, e.g. "
                                 "model.hidden_dim")
            current = sections[section]
            types = typing.get_type_hints(type(current))
            if name not in types:
                raise ValueError(f"unknown config key {key!r}; {section} has "
                                 f"{', '.join(types)}")
            sections[section] = dataclasses.replace(current, **{name: _parse(value, types[name],
                                                                             key)})
        return Config(**sections)

    @staticmethod
    def from_dict(data: dict) -> Config:
        """A config from its YAML form; sections that older versions wrote and this one
        retired (RETIRED_SECTIONS) are skipped, so their checkpoints still load."""
        flat = {f"{s}.{k}": v for s, fields in (data or {}).items() for k, v in fields.items()
                if s not in RETIRED_SECTIONS}
        return Config().override(flat)

    def save(self, path: str | Path) -> None:
        from autoperi.atomic import atomic_path

        with atomic_path(path) as tmp:
            tmp.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    @staticmethod
    def load(path: str | Path) -> Config:
        return Config.from_dict(yaml.safe_load(Path(path).read_text()))


def parse_overrides(args: list[str]) -> dict[str, str]:
    """`--model.hidden_dim=256` or `--model.hidden_dim 256` -> {"model.hidden_dim": "256"}."""
    out, k = {}, 0
    while k < len(args):
        arg = args[k]
        if not arg.startswith("--") or "." not in arg.split("=", 1)[0]:
            raise ValueError(
                f"unexpected argument {arg!r}; overrides look like --model.hidden_dim=256")
        if "=" in arg:
            key, value = arg[2:].split("=", 1)
        elif k + 1 < len(args):
            key, value = arg[2:], args[k + 1]
            k += 1
        else:
            raise ValueError(f"{arg} needs a value")
        out[key] = value
        k += 1
    return out


def _parse(value, kind, key: str):
    if not isinstance(value, str):
        return tuple(value) if typing.get_origin(kind) is tuple else value
    try:
        if kind is bool:
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if kind is int:
            return int(value)
        if kind is float:
            return float(value)
        if typing.get_origin(kind) is tuple:
            return tuple(v.strip() for v in value.split(",") if v.strip())
    except ValueError:
        name = getattr(kind, "__name__", kind)
        raise ValueError(f"{key}: cannot read {value!r} as {name}") from None
    return value


# Sections written by earlier versions that no longer configure anything (sampling settings
# live on the CLI / sample() since 0.1.0's first session).
RETIRED_SECTIONS = frozenset({"sample"})


def _to_plain(value):
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_to_plain(v) for v in value]
    return value


def parse_targets(specs: Sequence[str]) -> dict[str, tuple[float, float]]:
    """["band_gap=1.35:1.65", "heat_ref=-0.5"] -> {name: (low, high)} (a value is low = high)."""
    targets = {}
    for spec in specs:
        name, sep, value = spec.partition("=")
        try:
            if not sep:
                raise ValueError
            low, _, high = value.partition(":")
            bounds = (float(low), float(high or low))
        except ValueError:
            raise ValueError(
                f"target {spec!r} must look like name=value or name=low:high") from None
        if bounds[0] > bounds[1] or not all(map(math.isfinite, bounds)):
            raise ValueError(f"target {spec!r}: need finite low <= high")
        targets[name.strip()] = bounds
    return targets
