"""Embeddings of atoms, times and property conditions."""

import math

import torch
from torch import Tensor, nn


def mlp(dims: list[int], final_activation: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = []
    for k, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(a, b))
        if k < len(dims) - 2 or final_activation:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


class AtomEmbedding(nn.Module):
    """Embeds (soft) atom types [N, K] over a vocabulary of elements.

    Soft types let one module serve both fixed compositions (one-hot) and the continuous type
    states of a de novo flow. With `element_table` ([K, F] elemental features), chemically
    similar elements start with similar embeddings.
    """

    def __init__(self, num_types: int, dim: int, element_table: Tensor | None = None):
        super().__init__()
        self.types = nn.Linear(num_types, dim, bias=False)
        if element_table is not None:
            self.register_buffer("element_table", element_table.float())
            self.elements = nn.Linear(element_table.shape[1], dim)
        else:
            self.element_table = None

    def forward(self, type_probs: Tensor) -> Tensor:
        h = self.types(type_probs)
        if self.element_table is not None:
            h = h + self.elements(type_probs @ self.element_table.to(type_probs.dtype))
        return h  # [N, H]


class TimeEmbedding(nn.Module):
    """Sinusoidal features of t in [0, 1] followed by an MLP."""

    def __init__(self, dim: int, num_features: int = 32):
        super().__init__()
        freqs = torch.exp(torch.linspace(0.0, math.log(1000.0), num_features // 2))
        self.register_buffer("freqs", freqs)
        self.net = mlp([num_features, dim, dim])

    def forward(self, t: Tensor) -> Tensor:
        phase = t[:, None] * self.freqs.to(t.dtype)
        return self.net(torch.cat([torch.sin(phase), torch.cos(phase)], dim=-1))  # [B, H]


class PropertyEmbedding(nn.Module):
    """Scaled property values [B, P] with a learned "no condition" token per property.

    mask [B, P] is True where the value is given; hidden or unknown properties use the
    token, which is what classifier-free guidance contrasts against.
    """

    def __init__(self, num_properties: int, dim: int):
        super().__init__()
        self.num_properties = num_properties
        self.value = nn.ModuleList(mlp([1, dim, dim]) for _ in range(num_properties))
        self.null = nn.Parameter(torch.zeros(num_properties, dim))

    def forward(self, values: Tensor, mask: Tensor) -> Tensor:
        out = 0.0
        for p in range(self.num_properties):
            given = self.value[p](torch.nan_to_num(values[:, p : p + 1]))
            out = out + torch.where(mask[:, p : p + 1], given, self.null[p])
        return out  # [B, H]
