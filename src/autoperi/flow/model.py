"""The vector-field network: periodic encoder + time/condition embeddings + heads."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from autoperi.config import ModelConfig
from autoperi.data.features import PropertyScaler, element_features
from autoperi.flow.paths import TYPE_PATHS, y_to_lattice
from autoperi.flow.priors import AtomCountPrior, LatticePrior
from autoperi.nn.embeddings import PropertyEmbedding, TimeEmbedding, mlp
from autoperi.nn.encoder import PeriodicEncoder


@dataclass(frozen=True)
class DataStats:
    """What a model learned from its training data besides weights (saved as JSON)."""

    vocab: tuple[int, ...]  # atomic number of each type index
    conditions: tuple[str, ...]  # properties the model can be conditioned on
    heads: tuple[str, ...]  # properties predicted by heads (conditions + energy)
    energy_property: str
    scaler: PropertyScaler
    lattice_prior: LatticePrior
    atom_count_prior: AtomCountPrior
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "vocab": list(self.vocab), "conditions": list(self.conditions),
            "heads": list(self.heads), "energy_property": self.energy_property,
            "scaler": self.scaler.to_dict(), "lattice_prior": self.lattice_prior.to_dict(),
            "atom_count_prior": self.atom_count_prior.to_dict(), "extra": self.extra,
        }

    @staticmethod
    def from_dict(d: dict) -> DataStats:
        return DataStats(
            tuple(d["vocab"]), tuple(d["conditions"]), tuple(d["heads"]), d["energy_property"],
            PropertyScaler.from_dict(d["scaler"]), LatticePrior.from_dict(d["lattice_prior"]),
            AtomCountPrior.from_dict(d["atom_count_prior"]), d.get("extra", {}),
        )

    def type_index(self, atomic_numbers: Tensor) -> Tensor:
        """Vocabulary index of each atomic number; ValueError for elements outside it."""
        lookup = torch.full((120,), -1, dtype=torch.long)
        lookup[torch.tensor(self.vocab)] = torch.arange(len(self.vocab))
        index = lookup.to(atomic_numbers.device)[atomic_numbers]
        if bool((index < 0).any()):
            from pymatgen.core import Element

            unknown = sorted({Element.from_Z(int(z)).symbol
                              for z in atomic_numbers[index < 0].unique()})
            raise ValueError(f"elements {unknown} are not in this model's vocabulary")
        return index


@dataclass(frozen=True)
class FlowOutput:
    frac_velocity: Tensor  # [N, 3], per-crystal mean removed
    lattice_velocity: Tensor  # [B, 6] in y = (log lengths, angles)
    type_logits: Tensor  # [N, K] predicted clean types
    properties: Tensor  # [B, P] scaled head predictions (P = len(stats.heads))


class FlowModel(nn.Module):
    """v(x_t, t | condition) for fractional coordinates, lattice and atom types.

    Times: `t` for coordinates and lattice, `t_types` for types (1 means types are given:
    CSP). One model serves de novo generation and structure prediction.
    """

    def __init__(self, config: ModelConfig, stats: DataStats):
        super().__init__()
        if config.type_path not in TYPE_PATHS:
            raise ValueError(f"model.type_path must be one of {TYPE_PATHS}, got "
                             f"{config.type_path!r}")
        # (masked_gaussian hidden atoms show fading noise already)
        if config.hidden_noise < 0 or (config.hidden_noise > 0 and config.type_path != "masked"):
            raise ValueError(f"model.hidden_noise must be >= 0 and needs type_path 'masked', "
                             f"got {config.hidden_noise} with {config.type_path!r}")
        self.config, self.stats = config, stats
        k, h = len(stats.vocab), config.hidden_dim
        table = None
        if config.element_features:
            table = element_features()[0][torch.tensor(stats.vocab)]
        self.encoder = PeriodicEncoder(
            k, h, config.num_layers, config.graph, config.cutoff, config.max_neighbors,
            config.num_frequencies, config.num_radial, config.lattice_aware, table,
            config.lattice_latent_dim,
        )
        self.time = TimeEmbedding(h)
        self.type_time = TimeEmbedding(h)
        self.condition = PropertyEmbedding(len(stats.conditions), h)
        d = config.lattice_latent_dim
        gram_dim = d * (d + 1) // 2
        self.frac_head = mlp([h, h, 3])
        self.lattice_head = mlp([h, h, 6])
        self.type_head = mlp([h, h, k])
        self.property_head = mlp([h + gram_dim, h, max(len(stats.heads), 1)])
        self.register_buffer("_triu", torch.triu_indices(d, d), persistent=False)

    def forward(self, type_state: Tensor, frac_coords: Tensor, y: Tensor, num_atoms: Tensor,
                t: Tensor, t_types: Tensor, cond_values: Tensor | None = None,
                cond_mask: Tensor | None = None) -> FlowOutput:
        b = len(num_atoms)
        if cond_values is None:
            p = len(self.stats.conditions)
            cond_values = torch.zeros(b, p, device=y.device)
            cond_mask = torch.zeros(b, p, dtype=torch.bool, device=y.device)
        context = self.time(t) + self.type_time(t_types) + self.condition(cond_values, cond_mask)
        lattice = y_to_lattice(y)
        out = self.encoder(type_state, frac_coords, lattice, num_atoms, context)
        crystal_idx = torch.repeat_interleave(torch.arange(b, device=y.device), num_atoms)
        frac_velocity = self.frac_head(out.node)
        mean = torch.zeros(b, 3, dtype=frac_velocity.dtype, device=y.device)
        mean = mean.index_add(0, crystal_idx, frac_velocity) / num_atoms[:, None]
        latent = out.lattice_latent
        gram = latent @ latent.transpose(1, 2) / (latent.norm(dim=-1).mean(-1) ** 2)[:, None, None]
        gram_features = gram[:, self._triu[0], self._triu[1]]  # [B, d(d+1)/2]
        properties = self.property_head(torch.cat([out.crystal, gram_features], dim=-1))
        return FlowOutput(
            frac_velocity=frac_velocity - mean[crystal_idx],
            lattice_velocity=self.lattice_head(out.crystal),
            type_logits=self.type_head(out.node),
            properties=properties[:, : len(self.stats.heads)],
        )
