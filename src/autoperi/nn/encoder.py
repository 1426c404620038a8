"""The equivariant periodic encoder: atoms + periodic edges -> node and crystal latents."""

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from autoperi.geometry.graph import PeriodicGraph, dense_graph, edge_lengths, radius_graph
from autoperi.geometry.lattice import lattice_cosines
from autoperi.geometry.torus import shortest_displacement
from autoperi.nn.basis import FourierFeatures, RadialBasis, cosine_cutoff
from autoperi.nn.embeddings import AtomEmbedding, mlp
from autoperi.nn.layers import PeriodicMessageLayer

LATTICE_FEATURES = 7  # 3 log-length ratios, 3 cosines, log volume per atom


@dataclass(frozen=True)
class EncoderOutput:
    node: Tensor  # [N, H] invariant atom latents
    crystal: Tensor  # [B, H] invariant crystal latent (mean-pooled)
    lattice_latent: Tensor  # [B, d, 3] rotates with the crystal; row norms >= a floor


def lattice_invariants(lattice: Tensor, num_atoms: Tensor) -> Tensor:
    """Rotation-invariant description of each cell, [B, 7]."""
    log_len = torch.log(torch.linalg.norm(lattice, dim=-1))
    volume = torch.linalg.det(lattice).abs()
    per_atom = torch.log(volume / num_atoms.to(volume.dtype)) / 3.0
    return torch.cat(
        [log_len - log_len.mean(-1, keepdim=True), lattice_cosines(lattice), per_atom[:, None]],
        dim=-1,
    )


class PeriodicEncoder(nn.Module):
    """Stack of periodic message-passing layers over a dense or radius graph.

    Invariant by construction to rotations (only distances, fractional offsets and lattice
    invariants enter), periodic translations and integer image shifts (Fourier features of
    fractional offsets with integer wave vectors), and equivariant to atom permutations.
    """

    def __init__(self, num_types: int, hidden: int = 128, num_layers: int = 4,
                 graph: str = "dense", cutoff: float = 6.0, max_neighbors: int | None = 24,
                 num_frequencies: int = 8, num_radial: int = 32, lattice_aware: bool = True,
                 element_table: Tensor | None = None, lattice_latent_dim: int = 8,
                 lattice_latent_floor: float = 0.5):
        super().__init__()
        if graph not in ("dense", "radius"):
            raise ValueError(f"graph must be 'dense' or 'radius', got {graph!r}")
        self.graph_type, self.cutoff, self.max_neighbors = graph, cutoff, max_neighbors
        self.lattice_aware = lattice_aware
        self.atoms = AtomEmbedding(num_types, hidden, element_table)
        self.fourier = FourierFeatures(num_frequencies)
        self.radial = RadialBasis(num_radial, cutoff)
        edge_dim = self.fourier.dim + num_radial
        lattice_dim = hidden if lattice_aware else 0
        self.lattice_embed = mlp([LATTICE_FEATURES, hidden, hidden]) if lattice_aware else None
        self.layers = nn.ModuleList(
            PeriodicMessageLayer(hidden, edge_dim, lattice_dim) for _ in range(num_layers)
        )
        self.readout = mlp([hidden, hidden, hidden])
        self.lattice_coeffs = nn.Linear(hidden, 3 * lattice_latent_dim)
        # Learned coefficients are added to fixed lattice directions (a, b, c, a+b, ...), so
        # the block starts from the cell's own basis and cannot collapse to zero.
        self.register_buffer("base_coeffs", _base_directions(lattice_latent_dim))
        self.latent_dim, self.floor = lattice_latent_dim, lattice_latent_floor

    def build_graph(self, frac_coords: Tensor, lattice: Tensor, num_atoms: Tensor):
        if self.graph_type == "dense":
            return dense_graph(num_atoms)
        return radius_graph(frac_coords, lattice, num_atoms, self.cutoff, self.max_neighbors)

    def forward(self, type_probs: Tensor, frac_coords: Tensor, lattice: Tensor,
                num_atoms: Tensor, context: Tensor | None = None,
                graph: PeriodicGraph | None = None) -> EncoderOutput:
        """type_probs [N, K], frac_coords [N, 3], lattice [B, 3, 3], num_atoms [B];
        context [B, H] (time, conditions) is added to every atom of its crystal."""
        crystal_idx = torch.repeat_interleave(
            torch.arange(len(num_atoms), device=num_atoms.device), num_atoms)
        graph = graph if graph is not None else self.build_graph(frac_coords, lattice, num_atoms)
        source, target = graph.edge_index
        with torch.autocast(frac_coords.device.type, enabled=False):  # geometry in full precision
            delta = frac_coords[source] - frac_coords[target]  # [E, 3]
            if self.graph_type == "dense":
                nearest = shortest_displacement(delta)
                vec = (nearest[:, :, None] * lattice[crystal_idx[target]]).sum(1)  # [E, 3]
                distance = torch.linalg.norm(vec, dim=-1)  # [E]
                weight = None
            else:
                distance = edge_lengths(frac_coords, lattice, crystal_idx, graph)
                weight = cosine_cutoff(distance, self.cutoff)
            edge_attr = torch.cat([self.fourier(delta), self.radial(distance)], dim=-1)  # [E, F]
            invariants = lattice_invariants(lattice, num_atoms)  # [B, 7]
        h = self.atoms(type_probs)  # [N, H]
        if context is not None:
            h = h + context[crystal_idx]
        lattice_attr = None
        if self.lattice_embed is not None:
            lat = self.lattice_embed(invariants)  # [B, H]
            lattice_attr = lat[crystal_idx[target]]  # [E, H]
        for layer in self.layers:
            h = layer(h, graph.edge_index, edge_attr, lattice_attr, weight)
        pooled = torch.zeros(len(num_atoms), h.shape[1], dtype=h.dtype, device=h.device)
        pooled = pooled.index_add_(0, crystal_idx, h) / num_atoms[:, None].to(h.dtype)
        crystal = self.readout(pooled)  # [B, H]
        return EncoderOutput(h, crystal, self._lattice_latent(crystal, lattice))

    def _lattice_latent(self, crystal: Tensor, lattice: Tensor) -> Tensor:
        """d vectors that are invariant combinations of the basis vectors a, b, c: they
        rotate with the crystal. Rows shorter than `floor` (in units of the mean basis
        length) are stretched to it so the block cannot collapse to zero."""
        coeffs = self.base_coeffs + self.lattice_coeffs(crystal).view(-1, self.latent_dim, 3)
        vectors = coeffs @ lattice  # [B, d, 3]
        scale = torch.linalg.norm(lattice, dim=-1).mean(-1)[:, None]  # [B, 1]
        norms = torch.linalg.norm(vectors, dim=-1)  # [B, d]
        floor = self.floor * scale
        factor = torch.where(norms < floor, floor / norms.clamp_min(1e-12), 1.0)
        return vectors * factor[..., None]  # [B, d, 3]


def _base_directions(d: int) -> Tensor:
    """d distinct small integer combinations of the basis vectors, [d, 3]."""
    import itertools

    candidates = [v for v in itertools.product((0, 1, -1), repeat=3) if any(v)]
    candidates.sort(key=lambda v: (sum(map(abs, v)), [-x for x in v]))
    rows = [candidates[k % len(candidates)] for k in range(d)]
    return torch.tensor(rows, dtype=torch.float32)
