"""Periodic radius graph: every (i, j, image) with |cart_j + image @ lattice - cart_i| < cutoff.

Edges are found without gradients (the set is discrete) and their vectors are recomputed
differentiably by `edge_vectors`, so energies, forces and stress can be taken through them.
Two search backends give identical, canonically ordered edges:

* ``torch``: batched image enumeration, one image window per atom pair (over a reduced
  basis where that needs fewer images), evaluated as one matrix product per group of
  crystals; runs on any device and wins on small cells.
* ``vesin``: a compiled cell list (CPU), which wins for large cells.

``auto`` uses torch on accelerators and, on the CPU, picks per crystal by atom count
(threshold measured by bench/graph.py).
"""

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from autoperi.geometry.lattice import heights, reduce_lattice

# Crystals with more atoms than this go to the cell list on the CPU (bench/graph.py).
VESIN_MIN_ATOMS = 32
# Candidate (pair, image) vectors evaluated at once by the torch backend (~30 MB).
_CHUNK = 2_000_000
# Overhead of one more image-grid group in the torch backend, in candidate vectors
# (a rough estimate); windows are merged into a larger grid while that is cheaper.
_GROUP_COST = 20_000
# A crystal is searched over its reduced basis only if that needs this much fewer images.
_REDUCE_GAIN = 0.8
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
    then image). Edges are sorted by (target, source, image), whatever the backend; an edge
    is kept when its float64 length, from (frac_j - frac_i + image) @ lattice, is < cutoff.
    """
    if cutoff <= 0:
        raise ValueError(f"cutoff must be positive, got {cutoff}")
    if backend not in ("auto", "torch", "vesin"):
        raise ValueError(f"unknown backend {backend!r}; use 'auto', 'torch' or 'vesin'")
    if max_neighbors is not None and max_neighbors < 1:
        raise ValueError(f"max_neighbors must be >= 1, got {max_neighbors}")
    device = frac_coords.device
    with torch.no_grad():
        frac = frac_coords.detach().to(torch.float64)
        lat = lattice.detach().to(torch.float64)
        counts = num_atoms.to(torch.long)
        if backend == "auto":
            use_vesin = (counts > VESIN_MIN_ATOMS) if device.type == "cpu" else counts < 0
        else:
            use_vesin = torch.full_like(counts, backend == "vesin", dtype=torch.bool)
        # Each search returns its edges already in canonical order.
        parts = []
        if bool((~use_vesin).any()):
            parts.append(_subset(_torch_search, ~use_vesin, frac, lat, counts, cutoff))
        if bool(use_vesin.any()):
            parts.append(_subset(_vesin_search, use_vesin, frac, lat, counts, cutoff))
        if not parts:
            edge_index, image = _no_edges(device)
        elif len(parts) == 1:
            edge_index, image = parts[0]
        else:  # two sorted parts interleaved by crystal: a stable sort by target merges them
            edge_index = torch.cat([p[0] for p in parts], dim=1)
            image = torch.cat([p[1] for p in parts])
            order = torch.sort(edge_index[1], stable=True).indices
            edge_index, image = edge_index[:, order], image[order]
        if max_neighbors is not None:
            edge_index, image = _keep_nearest(edge_index, image, frac, lat, counts, max_neighbors)
    return PeriodicGraph(edge_index.to(device), image.to(device))


def _no_edges(device) -> tuple[Tensor, Tensor]:
    return (
        torch.zeros(2, 0, dtype=torch.long, device=device),
        torch.zeros(0, 3, dtype=torch.long, device=device),
    )


def _subset(search, mask: Tensor, frac: Tensor, lat: Tensor, counts: Tensor, cutoff: float):
    """Run `search` on the crystals in `mask` and map atom indices back to the whole batch."""
    if bool(mask.all()):
        return search(frac, lat, counts, cutoff)
    atom_mask = torch.repeat_interleave(mask, counts)
    global_atom = torch.arange(len(frac), device=frac.device)[atom_mask]
    edge_index, image = search(frac[atom_mask], lat[mask], counts[mask], cutoff)
    return global_atom[edge_index], image


def _exact_length_sq(frac, lat, crystal, source, target, image) -> Tensor:
    """Squared float64 edge lengths by the one formula both backends use near the cutoff:
    x = frac_j - frac_i + image, |x @ lattice|^2, elementwise (no order-dependent kernels)."""
    x = frac[source] - frac[target] + image.to(frac.dtype)  # [K, 3]
    rows = lat[crystal]  # [K, 3, 3]
    vec = x[:, 0, None] * rows[:, 0] + x[:, 1, None] * rows[:, 1] + x[:, 2, None] * rows[:, 2]
    return vec[:, 0] * vec[:, 0] + vec[:, 1] * vec[:, 1] + vec[:, 2] * vec[:, 2]


# Squared lengths within this relative band of cutoff^2 are recomputed by `_exact_length_sq`.
_BAND = 1e-9


def _torch_search(frac: Tensor, lat: Tensor, counts: Tensor, cutoff: float):
    """Image enumeration, one image window per atom pair; (edge_index, image) in canonical order.

    Along basis vector k an edge's fractional offset delta_k + n_k lies in (-w_k, w_k),
    w_k = cutoff / height_k, so each pair needs only the ceil(2 w_k) integers n_k of its own
    window. A skewed cell is searched over its reduced basis (fewer images). Crystals are
    grouped to share one image grid (the largest window in the group), and the squared
    lengths of all (pair, image) candidates of a group are one matrix product,
    coeff(pair) @ feat(image): with x = x0 + g, |x|^2_G = x0.G.x0 + 2 (G x0).g + g.G.g.
    Edges come out pair by pair; within a pair the grid order is the image order, except over
    a reduced basis, where the few such crystals are sorted afterwards.
    """
    device, dtype = frac.device, frac.dtype
    num_crystals = len(counts)
    far = None
    if len(frac) and float(frac.abs().max()) > 2**16:  # keep packed images in range: wrap,
        far = torch.floor(frac)  # and add the integer parts back to the images at the end
        frac = frac - far
    frac_in = frac
    reduced, transform = reduce_lattice(lat)  # reduced = transform @ lat
    size = torch.ceil(2 * cutoff / heights(lat)).clamp(1, 1e6).long()  # [B, 3] windows
    size_red = torch.ceil(2 * cutoff / heights(reduced)).clamp(1, 1e6).long()
    use_red = size_red.prod(1) < _REDUCE_GAIN * size.prod(1)  # [B]
    eye = torch.eye(3, dtype=dtype, device=device).expand(num_crystals, 3, 3)
    if bool(use_red.any()):
        basis = torch.where(use_red[:, None, None], reduced, lat)
        transform = torch.where(use_red[:, None, None], transform, eye)
        size = torch.where(use_red[:, None], size_red, size)
        inverse = torch.round(torch.linalg.inv(transform))  # integer: det(transform) = 1
        # Coordinates in the search basis: frac @ lat = (frac @ inverse) @ basis.
        frac = (frac[:, :, None] * inverse.index_select(0, crystal_index(counts))).sum(1)
    else:
        basis, transform = lat, eye
    width = cutoff / heights(basis)  # [B, 3]
    if not bool((torch.isfinite(width) & (width < 2**17)).all()):
        bad = int(torch.nonzero(~(torch.isfinite(width) & (width < 2**17)).all(1))[0, 0])
        raise ValueError(
            f"crystal {bad}: lattice too thin for cutoff {cutoff} Å "
            f"(cell heights {heights(lat)[bad].tolist()} Å)"
        )
    metric = basis @ basis.transpose(1, 2)  # [B, 3, 3]
    metric_coeff = torch.stack(
        [metric[:, 0, 0], metric[:, 1, 1], metric[:, 2, 2],
         2 * metric[:, 0, 1], 2 * metric[:, 0, 2], 2 * metric[:, 1, 2]], -1,
    )  # [B, 6] coefficients of the image features g_k^2 and g_k g_l

    # All ordered atom pairs (i, j) inside each crystal, in (target, source) order.
    square = counts * counts
    pair_crystal = torch.repeat_interleave(torch.arange(num_crystals, device=device), square)
    local = torch.arange(len(pair_crystal), device=device)
    local = local - (torch.cumsum(square, 0) - square).index_select(0, pair_crystal)
    n_of_pair = counts.index_select(0, pair_crystal)
    first_atom = (torch.cumsum(counts, 0) - counts).index_select(0, pair_crystal)
    target = first_atom + torch.div(local, n_of_pair, rounding_mode="floor")
    source = first_atom + local % n_of_pair

    # Per pair: the window's first image `start` and the coefficients of its squared lengths.
    # (frac is not wrapped: the window absorbs any integer part.)
    delta = frac.index_select(0, source) - frac.index_select(0, target)  # [P, 3]
    start = torch.floor(-delta - width.index_select(0, pair_crystal)) + 1  # [P, 3]
    x0 = delta + start  # [P, 3] offset of the window's first image
    x0_g = (x0[:, :, None] * metric.index_select(0, pair_crystal)).sum(1)  # [P, 3]
    coeff = torch.cat(
        [(x0_g * x0).sum(1, keepdim=True), 2 * x0_g, metric_coeff.index_select(0, pair_crystal)],
        dim=1,
    )  # [P, 10]
    start_img = (start[:, :, None] * transform.index_select(0, pair_crystal)).sum(1)  # [P, 3]
    start_code = _pack(torch.round(start_img).long())  # [P] original-basis image, packed
    is_self = source == target  # a pair (i, i) has delta = 0: its zero image is grid[-start]

    shapes, crystal_group = _window_groups(size, square)
    pair_group = crystal_group.index_select(0, pair_crystal)
    pair_order = torch.sort(pair_group, stable=True).indices  # by group, then in order
    group_pairs = torch.bincount(pair_group, minlength=len(shapes)).tolist()
    crystal_order = torch.sort(crystal_group, stable=True).indices
    group_crystals = torch.bincount(crystal_group, minlength=len(shapes)).tolist()
    position = torch.empty_like(crystal_group)  # index of each crystal within its group
    position[crystal_order] = torch.cat([torch.arange(k, device=device) for k in group_crystals])
    pair_position = position.index_select(0, pair_crystal)

    sure_sq = cutoff * cutoff * (1 - _BAND)  # below: an edge whatever the rounding
    maybe_sq = cutoff * cutoff * (1 + _BAND)  # in between: `_exact_length_sq` decides
    pair_count = torch.zeros_like(source)  # edges per pair
    tables = []  # per group: each crystal's grid images (original basis, packed), [Bg * I]
    table_base = 0
    chunks = []  # (pairs, local pair of each edge, table row of each edge)
    crystal_lo, pair_lo = 0, 0
    groups = zip(shapes, group_crystals, group_pairs, strict=True)
    for shape, num_group_crystals, num_group_pairs in groups:
        crystals = crystal_order[crystal_lo : crystal_lo + num_group_crystals]
        pairs = pair_order[pair_lo : pair_lo + num_group_pairs]
        crystal_lo += num_group_crystals
        pair_lo += num_group_pairs
        grid = _image_box(shape, device).to(dtype)  # [I, 3], 0 <= grid_k < shape_k
        num_images = len(grid)
        feat = torch.cat(
            [torch.ones_like(grid[:, :1]), grid, grid * grid, grid[:, [0]] * grid[:, [1]],
             grid[:, [0]] * grid[:, [2]], grid[:, [1]] * grid[:, [2]]], dim=1,
        ).T.contiguous()  # [10, I]
        grid_img = (grid[None, :, :, None] * transform.index_select(0, crystals)[:, None]).sum(2)
        table = _pack(torch.round(grid_img.reshape(-1, 3)).long())  # [Bg * I]
        step = max(1, _CHUNK // num_images)
        for lo in range(0, len(pairs), step):
            p = pairs[lo : lo + step]
            length_sq = coeff.index_select(0, p) @ feat  # [P, I]
            keep = length_sq < maybe_sq
            near = torch.nonzero(keep & (length_sq >= sure_sq))
            if len(near):  # at the cutoff within rounding: recompute exactly
                lp, col = near.unbind(1)
                pi = p[lp]
                image = _unpack(start_code[pi] + table[pair_position[pi] * num_images + col])
                exact = _exact_length_sq(
                    frac_in, lat, pair_crystal[pi], source[pi], target[pi], image
                )
                keep[lp, col] = exact < cutoff * cutoff
            self_pair = torch.nonzero(is_self.index_select(0, p)).squeeze(1)
            if len(self_pair):
                zero = -start.index_select(0, p.index_select(0, self_pair)).long()
                zero_col = (zero[:, 0] * shape[1] + zero[:, 1]) * shape[2] + zero[:, 2]
                keep[self_pair, zero_col] = False
            flat = torch.nonzero(keep.view(-1)).squeeze(1)
            local_pair = torch.div(flat, num_images, rounding_mode="floor")
            pair_count[p] = torch.bincount(local_pair, minlength=len(p))
            # Table row of an edge: its crystal's grid block + its column (flat - pair * I).
            row_shift = pair_position.index_select(0, p) * num_images + table_base
            row_shift -= torch.arange(len(p), device=device) * num_images
            row = row_shift.index_select(0, local_pair)
            row += flat
            chunks.append((p, local_pair, row))
        tables.append(table)
        table_base += len(table)
    num_edges = int(pair_count.sum())
    if num_edges == 0:
        return _no_edges(device)
    if len(chunks) == 1:
        row = chunks[0][2]
    else:  # chunks interleave pairs: place each edge at its pair's offset + rank in the pair
        pair_offset = torch.cumsum(pair_count, 0) - pair_count
        row = torch.empty(num_edges, dtype=torch.long, device=device)
        for p, local_pair, chunk_row in chunks:
            count = pair_count.index_select(0, p)
            shift = pair_offset.index_select(0, p) - (torch.cumsum(count, 0) - count)  # [P]
            dest = shift.index_select(0, local_pair)
            dest += torch.arange(len(local_pair), device=device)
            row[dest] = chunk_row
    pair_of_edge = torch.repeat_interleave(pair_count)  # [E], non-decreasing
    edge_index = torch.empty(2, num_edges, dtype=torch.long, device=device)
    torch.index_select(source, 0, pair_of_edge, out=edge_index[0])
    torch.index_select(target, 0, pair_of_edge, out=edge_index[1])
    code = torch.cat(tables).index_select(0, row)
    torch.index_select(start_code, 0, pair_of_edge, out=row)  # `row` is free: reuse it
    code += row
    image = _unpack(code)
    if bool(use_red.any()):  # reduced-basis grid order is not the image order: sort those
        red_pairs = torch.nonzero(use_red.index_select(0, pair_crystal)).squeeze(1)
        count = pair_count.index_select(0, red_pairs)
        first = (torch.cumsum(pair_count, 0) - pair_count).index_select(0, red_pairs)
        idx = torch.arange(int(count.sum()), device=device)  # their edges' positions
        idx += torch.repeat_interleave(first - (torch.cumsum(count, 0) - count), count)
        moved = idx[_canonical_permutation(edge_index[0, idx], edge_index[1, idx], image[idx])]
        image[idx] = image[moved]  # source and target are constant along a pair's edges
    if far is not None:  # constant along a pair's edges: the order is kept
        far = far.long()
        image += far.index_select(0, edge_index[1]) - far.index_select(0, edge_index[0])
    return edge_index, image


def _image_box(shape: list[int], device) -> Tensor:
    """All integer offsets with 0 <= offset_k < shape_k, [I, 3]."""
    ranges = [torch.arange(int(e), device=device) for e in shape]
    return torch.cartesian_prod(*ranges).reshape(-1, 3)


_PACK_BITS = 20  # image components in [-2^19, 2^19) pack into one int64 (3 x 20 bits)


def _pack(image: Tensor) -> Tensor:
    """Integer images [E, 3] as one int64 each, linear: pack(a) + pack(b) = pack(a + b)."""
    return (image[:, 0] << 2 * _PACK_BITS) + (image[:, 1] << _PACK_BITS) + image[:, 2]


def _unpack(code: Tensor) -> Tensor:
    """Inverse of `_pack` for components in [-2^19, 2^19), [E, 3]. Consumes `code`."""
    half = 1 << (_PACK_BITS - 1)
    mask = (1 << _PACK_BITS) - 1
    code += (half << 2 * _PACK_BITS) + (half << _PACK_BITS) + half  # every field >= 0
    image = torch.empty(len(code), 3, dtype=torch.long, device=code.device)
    torch.bitwise_right_shift(code, 2 * _PACK_BITS, out=image[:, 0])
    torch.bitwise_right_shift(code, _PACK_BITS, out=image[:, 1])
    image[:, 1] &= mask
    torch.bitwise_and(code, mask, out=image[:, 2])
    image -= half
    return image


def _window_groups(size: Tensor, pairs: Tensor) -> tuple[list[list[int]], Tensor]:
    """Group crystals to share an image grid: (grid shape per group, group of each crystal).

    A group costs a fixed overhead plus (its pairs x its grid size) candidates; windows are
    merged into a larger grid while that is cheaper than a group of their own.
    """
    keys, key_of_crystal = torch.unique(size, dim=0, return_inverse=True)
    key_pairs = torch.zeros(len(keys), dtype=torch.long, device=size.device)
    key_pairs = key_pairs.index_add_(0, key_of_crystal, pairs).tolist()
    keys = keys.tolist()

    def volume(shape):
        return shape[0] * shape[1] * shape[2]

    shapes: list[list[int]] = []
    group_pairs: list[int] = []
    group_of_key = [0] * len(keys)
    for k in sorted(range(len(keys)), key=lambda k: -volume(keys[k])):
        best, best_cost = -1, _GROUP_COST + key_pairs[k] * volume(keys[k])
        for g, shape in enumerate(shapes):
            merged = [max(a, b) for a, b in zip(shape, keys[k], strict=True)]
            cost = (group_pairs[g] + key_pairs[k]) * volume(merged)
            cost -= group_pairs[g] * volume(shape)
            if cost < best_cost:
                best, best_cost = g, cost
        if best < 0:
            shapes.append(list(keys[k]))
            group_pairs.append(0)
            best = len(shapes) - 1
        shapes[best] = [max(a, b) for a, b in zip(shapes[best], keys[k], strict=True)]
        group_pairs[best] += key_pairs[k]
        group_of_key[k] = best
    group = torch.tensor(group_of_key, dtype=torch.long, device=size.device)
    return shapes, group.index_select(0, key_of_crystal)


def _vesin_search(frac: Tensor, lat: Tensor, counts: Tensor, cutoff: float):
    """Cell-list search (vesin, CPU), one crystal at a time; (edge_index, image), canonical."""
    from vesin import NeighborList

    search = NeighborList(cutoff=cutoff, full_list=True)
    frac_np, lat_np = frac.cpu().numpy(), lat.cpu().numpy()
    out_s, out_t, out_img, out_d = [], [], [], []
    start = 0
    for b, n in enumerate(counts.tolist()):
        cart = frac_np[start : start + n] @ lat_np[b]
        i, j, shifts, d = search.compute(
            points=cart, box=lat_np[b], periodic=True, quantities="ijSd"
        )
        # vesin: vector = cart_j - cart_i + S @ box, i.e. source j, target i, image S.
        out_t.append(i.view(np.int64) + start)  # uint64 indices, far below 2^63
        out_s.append(j.view(np.int64) + start)
        out_img.append(shifts)
        out_d.append(d)
        start += n
    if not out_s:
        return _no_edges(frac.device)
    source = torch.from_numpy(np.concatenate(out_s))
    target = torch.from_numpy(np.concatenate(out_t))
    image = torch.from_numpy(np.concatenate(out_img)).long()
    # vesin keeps pairs at the cutoff (<=); the contract is strict (<) and, near the cutoff,
    # decided by the same float64 formula as the torch backend.
    near = torch.nonzero(torch.from_numpy(np.concatenate(out_d)) >= cutoff * (1 - _BAND))
    near = near.squeeze(1)
    if len(near):
        s, t = source[near], target[near]
        length_sq = _exact_length_sq(frac, lat, crystal_index(counts)[t], s, t, image[near])
        drop = near[length_sq >= cutoff * cutoff]
        if len(drop):
            keep = torch.ones(len(image), dtype=torch.bool)
            keep[drop] = False
            source, target, image = source[keep], target[keep], image[keep]
    order = _canonical_permutation(source, target, image)
    edge_index = torch.stack([source.index_select(0, order), target.index_select(0, order)])
    return edge_index.to(frac.device), image.index_select(0, order).to(frac.device)


def _canonical_permutation(source: Tensor, target: Tensor, image: Tensor) -> Tensor:
    """Permutation sorting edges by (target, source, image): one sort of a packed int64 key
    when it fits, else stable lexicographic passes."""
    if len(source) == 0:
        return torch.zeros(0, dtype=torch.long, device=source.device)
    low = image.min(dim=0).values
    span = (image.max(dim=0).values - low + 1).tolist()
    num = int(torch.maximum(source.max(), target.max())) + 1
    if num * num * span[0] * span[1] * span[2] < 2**62:
        shifted = image - low
        code = (shifted[:, 0] * span[1] + shifted[:, 1]) * span[2] + shifted[:, 2]
        key = (target * num + source) * (span[0] * span[1] * span[2]) + code
        return torch.sort(key).indices  # keys are unique: edges are distinct
    order = torch.arange(len(source), device=source.device)
    for part in (image[:, 2], image[:, 1], image[:, 0], source, target):
        order = order[torch.sort(part[order], stable=True).indices]
    return order


def _keep_nearest(edge_index, image, frac, lat, counts, max_neighbors: int):
    """Keep each target's `max_neighbors` nearest edges, ties broken by the canonical order."""
    target = edge_index[1]
    length = edge_lengths(frac, lat, crystal_index(counts), PeriodicGraph(edge_index, image))
    rank_key = torch.round(length / _TIE_RESOLUTION)
    order = torch.sort(rank_key, stable=True).indices
    order = order[torch.sort(target[order], stable=True).indices]  # by target, then distance
    sorted_target = target[order]
    first = torch.searchsorted(sorted_target, sorted_target, right=False)
    rank = torch.arange(len(order), device=order.device) - first
    kept = torch.sort(order[rank < max_neighbors]).values  # back to canonical order
    return edge_index[:, kept], image[kept]


def dense_graph(num_atoms: Tensor) -> PeriodicGraph:
    """Every ordered pair (j -> i) of atoms inside each cell, self-pairs included, image 0.

    With Fourier features of fractional offsets this sees all periodic images at once and
    has N^2 edges per crystal instead of the 15-40x more of a 6-8 Å radius graph.
    """
    device = num_atoms.device
    counts = num_atoms.long()
    pair_crystal = torch.repeat_interleave(torch.arange(len(counts), device=device), counts**2)
    pair_start = torch.cumsum(counts**2, 0) - counts**2
    local = torch.arange(len(pair_crystal), device=device) - pair_start[pair_crystal]
    atom_start = (torch.cumsum(counts, 0) - counts)[pair_crystal]
    n = counts[pair_crystal]
    edge_index = torch.stack([atom_start + local % n, atom_start + local // n])
    return PeriodicGraph(edge_index, torch.zeros(edge_index.shape[1], 3, dtype=torch.long,
                                                 device=device))
