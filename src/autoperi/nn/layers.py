"""One periodic message-passing layer."""

import torch
from torch import Tensor, nn

from autoperi.nn.embeddings import mlp


class PeriodicMessageLayer(nn.Module):
    """h_i += phi([h_i, sum_j psi([h_i, h_j, e_ij, g_i]) / n_i]), then LayerNorm.

    e_ij are invariant edge features (radial basis and Fourier features of the fractional
    offset), g_i optional per-crystal lattice invariants, so the update is invariant to
    rotations, periodic translations and image shifts and equivariant to permutations.
    """

    def __init__(self, hidden: int, edge_dim: int, lattice_dim: int = 0):
        super().__init__()
        self.message = mlp([2 * hidden + edge_dim + lattice_dim, hidden, hidden],
                           final_activation=True)
        self.update = mlp([2 * hidden, hidden, hidden])
        self.norm = nn.LayerNorm(hidden)

    def forward(self, h: Tensor, edge_index: Tensor, edge_attr: Tensor,
                lattice_attr: Tensor | None = None, edge_weight: Tensor | None = None) -> Tensor:
        source, target = edge_index
        parts = [h[target], h[source], edge_attr]
        if lattice_attr is not None:
            parts.append(lattice_attr)
        m = self.message(torch.cat(parts, dim=-1)).to(h.dtype)  # [E, H], sums in h's precision
        if edge_weight is not None:
            m = m * edge_weight[:, None]
        total = torch.zeros_like(h).index_add_(0, target, m)
        count = torch.zeros(h.shape[0], dtype=h.dtype, device=h.device)
        count = count.index_add_(0, target, torch.ones_like(target, dtype=h.dtype))
        aggregated = total / count.clamp_min(1.0)[:, None]  # [N, H]
        return self.norm(h + self.update(torch.cat([h, aggregated], dim=-1)))
