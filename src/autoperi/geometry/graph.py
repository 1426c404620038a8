"""Periodic radius graph: every (i, j, image) with |cart_j + image @ lattice - cart_i| < cutoff.

Edges are found without gradients (the set is discrete) and their vectors are recomputed
differentiably by `edge_vectors`, so energies, forces and stress can be taken through them.
Two search backends give identical, canonically ordered edges:

* ``torch``: batched image enumeration over a reduced basis, grouped by image-box size;
  runs on any device and wins on small cells.
* ``vesin``: a compiled cell list (CPU), which wins for large cells.

``auto`` uses torch on accelerators and, on the CPU, picks per crystal by atom count
(threshold measured by bench/graph.py).
"""

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from autoperi.geometry.lattice import heights, reduce_lattice
from autoperi.geometry.torus import wrap

# Crystals with more atoms than this go to the cell list on the CPU (bench/graph.py).
VESIN_MIN_ATOMS = 64
# Candidate vectors evaluated at once by the torch backend (bounds memory to ~100 MB).
_CHUNK = 2_000_000
# Distances are compared at this resolution when ranking neighbours, so symmetry-equivalent
# neighbours tie exactly and the tie is broken by (j, image), not by rounding noise.
_TIE_RESOLUTION = 1e-6


@dataclass(frozen=True)
class PeriodicGraph:
    """Edges of a batch of crystals. Messages flow from source j to target i."""

    edge_index: Tensor  # [2, E] long: row 0 source j, row 1 target i (global atom indices)
    edge_image: Tensor  # [E, 3] long: integer cell offset of the source

    @property
    def num_edges(self) -> int:
        return int(self.edge_index.shape[1])


def crystal_index(num_atoms: Tensor) -> Tensor:
    """Crystal of each atom, [N], from atoms per crystal [B]."""
    return torch.repeat_interleave(torch.arange(len(num_atoms), device=num_atoms.device), num_atoms)


def edge_vectors(
    frac_coords: Tensor, lattice: Tensor, crystal_idx: Tensor, graph: PeriodicGraph
) -> Tensor:
    """cart_j + image @ lattice - cart_i in Å, [E, 3]; differentiable in coordinates and lattice."""
    source, target = graph.edge_index
    offset = frac_coords[source] - frac_coords[target] + graph.edge_image.to(frac_coords.dtype)
    return torch.einsum("ei,eij->ej", offset, lattice[crystal_idx[target]])  # [E, 3]


def edge_lengths(
    frac_coords: Tensor, lattice: Tensor, crystal_idx: Tensor, graph: PeriodicGraph
) -> Tensor:
    """Edge lengths in Å, [E]; differentiable."""
    return torch.linalg.norm(edge_vectors(frac_coords, lattice, crystal_idx, graph), dim=-1)


def radius_graph(
    frac_coords: Tensor,
    lattice: Tensor,
    num_atoms: Tensor,
    cutoff: float,
    max_neighbors: int | None = None,
    backend: str = "auto",
) -> PeriodicGraph:
    """All periodic edges shorter than `cutoff` (Å) in a batch of crystals.

    frac_coords [N, 3], lattice [B, 3, 3] (rows a, b, c), num_atoms [B]. Self-images
    (i == j, image != 0) and several images of one pair are all included. With
    `max_neighbors`, each target keeps its nearest sources (ties broken by source index,
    then image). Edges are sorted by (target, source, image), whatever the backend.
    """
    if cutoff <= 0:
        raise ValueError(f"cutoff must be positive, got {cutoff}")
    if backend not in ("auto", "torch", "vesin"):
        raise ValueError(f"unknown backend {backend!r}; use 'auto', 'torch' or 'vesin'")
    device = frac_coords.device
    with torch.no_grad():
        frac = frac_coords.detach().to(torch.float64)
        lat = lattice.detach().to(torch.float64)
        counts = num_atoms.to(torch.long)
        if backend == "auto":
            use_vesin = (counts > VESIN_MIN_ATOMS) if device.type == "cpu" else counts < 0
        else:
            use_vesin = torch.full_like(counts, backend == "vesin", dtype=torch.bool)
        parts = []
        if bool((~use_vesin).any()):
            parts.append(_subset(_torch_search, ~use_vesin, frac, lat, counts, cutoff))
        if bool(use_vesin.any()):
            parts.append(_subset(_vesin_search, use_vesin, frac, lat, counts, cutoff))
        source = torch.cat([p[0] for p in parts])
        target = torch.cat([p[1] for p in parts])
        image = torch.cat([p[2] for p in parts])
        source, target, image = _canonical_order(source, target, image)
        if max_neighbors is not None:
            source, target, image = _keep_nearest(
                source, target, image, frac, lat, counts, max_neighbors
            )
    return PeriodicGraph(torch.stack([source, target]).to(device), image.to(device))


def _subset(search, mask: Tensor, frac: Tensor, lat: Tensor, counts: Tensor, cutoff: float):
    """Run `search` on the crystals in `mask` and map atom indices back to the whole batch."""
    atom_mask = torch.repeat_interleave(mask, counts)
    global_atom = torch.arange(len(frac), device=frac.device)[atom_mask]
    source, target, image = search(frac[atom_mask], lat[mask], counts[mask], cutoff)
    return global_atom[source], global_atom[target], image


def _torch_search(frac: Tensor, lat: Tensor, counts: Tensor, cutoff: float):
    """Image enumeration over a size-reduced basis, grouped by the image-box size."""
    device = frac.device
    reduced, transform = reduce_lattice(lat)  # reduced = transform @ lat
    inverse = torch.linalg.inv(transform)
    crystal_idx = crystal_index(counts)
    # Coordinates in the reduced basis, wrapped; `shift` remembers the integer part removed.
    frac_red_raw = torch.einsum("ni,nij->nj", frac, inverse[crystal_idx])
    frac_red = wrap(frac_red_raw)
    shift = torch.round(frac_red_raw - frac_red)  # [N, 3]
    box = torch.ceil(cutoff / heights(reduced) - 1e-12).long().clamp_min(0)  # [B, 3]

    # All ordered atom pairs (i, j) inside each crystal.
    pair_crystal = torch.repeat_interleave(torch.arange(len(counts), device=device), counts**2)
    pair_start = torch.cumsum(counts**2, 0) - counts**2
    local = torch.arange(len(pair_crystal), device=device) - pair_start[pair_crystal]
    atom_start = torch.cumsum(counts, 0) - counts
    n_of_pair = counts[pair_crystal]
    target = atom_start[pair_crystal] + local // n_of_pair
    source = atom_start[pair_crystal] + local % n_of_pair

    out_s, out_t, out_img = [], [], []
    cutoff_sq = cutoff * cutoff
    for key in torch.unique(box, dim=0):
        images = _image_box(key, device)  # [I, 3]
        crystals = (box == key).all(dim=1)
        pairs = torch.nonzero(crystals[pair_crystal]).squeeze(1)
        step = max(1, _CHUNK // len(images))
        for lo in range(0, len(pairs), step):
            p = pairs[lo : lo + step]
            s, t, b = source[p], target[p], pair_crystal[p]
            delta = frac_red[s] - frac_red[t]  # [P, 3]
            offset = delta[:, None, :] + images[None, :, :].to(delta.dtype)  # [P, I, 3]
            vec = torch.einsum("pki,pij->pkj", offset, reduced[b])  # [P, I, 3]
            dist_sq = (vec * vec).sum(-1)  # [P, I]
            keep = dist_sq < cutoff_sq
            keep &= ~((s == t)[:, None] & (images == 0).all(dim=1)[None, :])
            pi, ii = torch.nonzero(keep, as_tuple=True)
            img_red = images[ii].to(torch.float64) - shift[s[pi]] + shift[t[pi]]
            img = torch.einsum("ei,eij->ej", img_red, transform[b[pi]])
            out_s.append(s[pi])
            out_t.append(t[pi])
            out_img.append(torch.round(img).long())
    if not out_s:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return empty, empty, torch.zeros(0, 3, dtype=torch.long, device=device)
    return torch.cat(out_s), torch.cat(out_t), torch.cat(out_img)


def _image_box(extent: Tensor, device) -> Tensor:
    """All integer offsets with |offset_k| <= extent_k, [I, 3]."""
    ranges = [torch.arange(-int(e), int(e) + 1, device=device) for e in extent]
    return torch.cartesian_prod(*ranges).reshape(-1, 3)


def _vesin_search(frac: Tensor, lat: Tensor, counts: Tensor, cutoff: float):
    """Cell-list search (vesin, CPU), one crystal at a time."""
    from vesin import NeighborList

    search = NeighborList(cutoff=cutoff, full_list=True)
    frac_np, lat_np = frac.cpu().numpy(), lat.cpu().numpy()
    out_s, out_t, out_img = [], [], []
    start = 0
    for b, n in enumerate(counts.tolist()):
        cart = frac_np[start : start + n] @ lat_np[b]
        i, j, shifts = search.compute(points=cart, box=lat_np[b], periodic=True, quantities="ijS")
        # vesin: vector = cart_j - cart_i + S @ box, i.e. source j, target i, image S.
        out_t.append(i.astype(np.int64) + start)
        out_s.append(j.astype(np.int64) + start)
        out_img.append(shifts.astype(np.int64).reshape(-1, 3))
        start += n
    device = frac.device
    to = lambda parts: torch.from_numpy(np.concatenate(parts)).to(device)  # noqa: E731
    source, target, image = to(out_s), to(out_t), to(out_img)
    # vesin keeps pairs at exactly the cutoff distance; the contract here is strict (< cutoff).
    vec = frac[source] - frac[target] + image.to(frac.dtype)
    crystal_idx = crystal_index(counts)
    length_sq = (torch.einsum("ei,eij->ej", vec, lat[crystal_idx[target]]) ** 2).sum(-1)
    keep = length_sq < cutoff * cutoff
    return source[keep], target[keep], image[keep]


def _canonical_order(source: Tensor, target: Tensor, image: Tensor):
    """Sort edges by (target, source, image) with stable lexicographic passes."""
    order = torch.arange(len(source), device=source.device)
    for key in (image[:, 2], image[:, 1], image[:, 0], source, target):
        order = order[torch.sort(key[order], stable=True).indices]
    return source[order], target[order], image[order]


def _keep_nearest(source, target, image, frac, lat, counts, max_neighbors: int):
    """Keep each target's `max_neighbors` nearest edges, ties broken by the canonical order."""
    if max_neighbors < 1:
        raise ValueError(f"max_neighbors must be >= 1, got {max_neighbors}")
    graph = PeriodicGraph(torch.stack([source, target]), image)
    length = edge_lengths(frac, lat, crystal_index(counts), graph)
    rank_key = torch.round(length / _TIE_RESOLUTION)
    order = torch.sort(rank_key, stable=True).indices
    order = order[torch.sort(target[order], stable=True).indices]  # by target, then distance
    sorted_target = target[order]
    first = torch.searchsorted(sorted_target, sorted_target, right=False)
    rank = torch.arange(len(order), device=order.device) - first
    kept = torch.sort(order[rank < max_neighbors]).values  # back to canonical order
    return source[kept], target[kept], image[kept]
