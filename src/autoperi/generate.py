"""High-level generation: de novo sampling with targets and element constraints, and crystal
structure prediction (CSP) for given compositions. Both return pymatgen structures whose
`properties` hold the model's own property predictions (`predicted_<name>`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import torch
from pymatgen.core import Composition, Element, Structure
from tqdm.auto import tqdm

from autoperi.checkpoint import load_model
from autoperi.data.crystal import CrystalBatch
from autoperi.eval.distribution import SYMPREC
from autoperi.flow.model import FlowModel
from autoperi.flow.paths import lattice_to_y
from autoperi.flow.sampler import Request, sample_flow
from autoperi.geometry.clash import ClashFloor

log = logging.getLogger(__name__)


def element_mask(model: FlowModel, elements: Sequence[str] = (),
                 exclude: Sequence[str] = ()) -> torch.Tensor | None:
    """Allowed types over the model's vocabulary: only `elements` (if given), never `exclude`."""
    if not elements and not exclude:
        return None
    vocab = list(model.stats.vocab)

    def z_of(symbol: str) -> int:
        try:
            return Element(symbol.strip()).Z
        except ValueError:
            raise ValueError(f"unknown element {symbol!r}") from None

    allowed = torch.ones(len(vocab), dtype=torch.bool)
    if elements:
        wanted = {z_of(s) for s in elements}
        missing = sorted(Element.from_Z(z).symbol for z in wanted - set(vocab))
        if missing:
            raise ValueError(f"elements {missing} are not in this model's vocabulary")
        allowed = torch.tensor([z in wanted for z in vocab])
    for s in exclude:
        z = z_of(s)
        if z in vocab:
            allowed[vocab.index(z)] = False
    if not bool(allowed.any()):
        raise ValueError("the element constraints leave no element to generate")
    return allowed


def sample(model: FlowModel | str | None = None, num: int = 16, targets: dict | None = None,
           guidance: float = 1.0, elements: Sequence[str] = (), exclude: Sequence[str] = (),
           num_atoms: int | None = None, steps: int = 50, method: str = "heun", seed: int = 0,
           batch_size: int = 256, device: str = "cpu", progress: bool = True,
           commit_at: float | None = None, charge_neutral: bool = False,
           jump_at: float = 1.0, clash: ClashFloor | None = None) -> list[Structure]:
    """Generate `num` new crystals (de novo). targets: {property: (low, high)}.

    commit_at: decide the atom types at this flow time and move only the geometry after it
    (`flow.sampler.sample_flow`). charge_neutral (needs commit_at): decide them as the most
    probable assignment whose composition passes the SMACT check of the suite (charge
    neutral with Pauling ordering; single elements and alloys pass), when one is found among
    the 256 most probable assignments. jump_at: integrate to this flow time, then take the
    model's clean prediction in one step (`flow.sampler.sample_flow`; 1.0 = no jump). Jumps
    raise Perov-5 match rates and structural validity but blur the crystals: nearly all
    come out P1 (BENCHMARKS.md, "Sampling schedule"), so the default is no jump.
    clash: push apart atoms closer than this floor after every step from its flow time on
    (`geometry.clash.ClashFloor`, `flow.sampler.sample_flow`); None: the model's default
    (`clash_of`).
    """
    if charge_neutral and commit_at is None:
        raise ValueError("charge_neutral needs commit_at (the time the types are decided)")
    model = _model(model, device)
    generator = torch.Generator().manual_seed(seed)
    allowed = element_mask(model, elements, exclude)
    _check_targets(model, targets or {})
    out = []
    with tqdm(total=num, desc="sampling", disable=not progress, unit="crystal") as bar:
        for lo in range(0, num, batch_size):
            b = min(batch_size, num - lo)
            if num_atoms is not None:
                if num_atoms < 1:
                    raise ValueError(f"num_atoms must be >= 1, got {num_atoms}")
                counts = torch.full((b,), num_atoms, dtype=torch.long)
            else:
                counts = model.stats.atom_count_prior.sample(b, generator)
            values, mask = _conditions(model, targets or {}, b, generator)
            request = Request(counts, None, values, mask, allowed,
                              _charge_neutral if charge_neutral else None)
            batch, _ = sample_flow(model, request, steps, method, guidance, generator,
                                   commit_at=commit_at, jump_at=jump_at,
                                   clash=clash or clash_of(model))
            out += _with_predictions(model, batch)
            bar.update(b)
    return out


def predict_structures(compositions: Sequence[Composition | str | Structure],
                       model: FlowModel | str | None = None, samples_per_input: int = 1,
                       steps: int = 50, method: str = "heun", seed: int = 0,
                       batch_size: int = 256, device: str = "cpu",
                       progress: bool = True, jump_at: float = 1.0,
                       clash: ClashFloor | None = None) -> list[Structure]:
    """CSP: `samples_per_input` structures for each composition (as written: "Na4Cl4" has
    8 atoms), in input order; each carries properties input_index and sample_index.
    jump_at, clash: as in `sample`."""
    model = _model(model, device)
    generator = torch.Generator().manual_seed(seed)
    numbers = []
    for k, item in enumerate(compositions):
        if isinstance(item, Structure):
            zs = list(item.atomic_numbers)
        else:
            try:
                comp = Composition(item) if isinstance(item, str) else item
            except (ValueError, KeyError) as exc:
                raise ValueError(f"input {k}: cannot read composition {item!r} ({exc})") from None
            zs = [el.Z for el, amount in sorted(comp.items()) for _ in range(round(amount))]
            if not zs or any(abs(a - round(a)) > 1e-6 for a in comp.values()):
                raise ValueError(f"input {k}: {item!r} needs whole numbers of atoms")
        numbers += [(k, s, zs) for s in range(samples_per_input)]
    out = []
    for lo in tqdm(range(0, len(numbers), batch_size), desc="predicting", disable=not progress):
        chunk = numbers[lo:lo + batch_size]
        counts = torch.tensor([len(zs) for _, _, zs in chunk])
        z = torch.tensor([v for _, _, zs in chunk for v in zs])
        batch, _ = sample_flow(model, Request(counts, z), steps, method, 1.0, generator,
                               jump_at=jump_at, clash=clash or clash_of(model))
        for (k, s, _), structure in zip(chunk, _with_predictions(model, batch)):
            structure.properties.update({"input_index": k, "sample_index": s})
            out.append(structure)
    return out


# defaults of `relax_generated` (and `autoperi sample/csp --relax`)
RELAX_FMAX, RELAX_STEPS = 0.1, 300


def relax_generated(structures: Sequence[Structure], fmax: float = RELAX_FMAX,
                    steps: int = RELAX_STEPS, potential=None,
                    progress: bool = True, pressure: float = 0.0) -> list[Structure]:
    """The structures relaxed (positions and cell) with a pretrained potential (CHGNet by
    default, `eval.energy.relax`), in order, each carrying its properties plus
    energy_per_atom_generated / energy_per_atom (eV/atom, as generated / relaxed),
    relax_max_force (eV/Å, at the end) and relax_converged (1 if that force fell below fmax
    within `steps`, else 0); `pressure` (GPa) relaxes towards the enthalpy minimum at that
    hydrostatic pressure (e.g. the 10 GPa at which Carbon-24 was made). A structure the
    potential cannot take or fails on is kept as generated, with relax_problem saying why;
    the others go on. Not part of the generative model; it helps only where the data's
    structures are minima of the potential (measured: MP-20 CSP match rate doubles,
    Perov-5 and Carbon-24 fall; BENCHMARKS.md, "Relaxed samples")."""
    from autoperi.eval.energy import relax

    result = relax(structures, fmax=fmax, steps=steps, potential=potential, progress=progress,
                   pressure=pressure)
    out = []
    for k, (given, moved) in enumerate(zip(structures, result.structures, strict=True)):
        failed = result.reasons[k] is not None or moved is None
        done = given.copy() if failed else moved.copy()
        done.properties = dict(given.properties)
        if failed:
            done.properties["relax_problem"] = result.reasons[k] or "not relaxed"
        else:
            done.properties.update({
                "energy_per_atom_generated": float(result.e_unrelaxed[k]),
                "energy_per_atom": float(result.e_relaxed[k]),
                # 1/0, not a bool: every output format keeps numbers
                "relax_converged": int(result.converged[k]),
                "relax_max_force": float(result.max_force[k])})
        out.append(done)
    return out


SNAP_ROUNDS = 4


def symmetrize_generated(structures: Sequence[Structure],
                         symprec: float = SYMPREC) -> list[Structure]:
    """The structures snapped to the symmetry spglib finds at `symprec` Å (with spglib's own
    angle tolerance), in order. ASE's `refine_symmetry`, repeated until self-consistent: the
    cell and the atoms take spglib's ideal form of that space group, placed so that one
    atom stays put; the atoms, their order and the cell's orientation stay. Each carries its
    properties plus spacegroup (the international number it has afterwards) and
    symmetrize_max_shift (Å: the largest move of an atom relative to the cell, the rigid
    translation removed). A structure that is not finite and ordered, that spglib cannot
    take or snap consistently, or whose snapped form has atoms closer than structural
    validity allows, is kept as generated with symmetrize_problem saying why; the others go
    on. It removes noise; it cannot create
    symmetry the model did not almost make (BENCHMARKS.md, "Symmetrized samples")."""
    out = []
    for given in structures:
        snapped, problem = _snapped(given, symprec)
        if problem is None:
            snapped.properties = {**given.properties, **snapped.properties}
            out.append(snapped)
        else:
            kept = given.copy()
            kept.properties = {**given.properties, "symmetrize_problem": problem}
            out.append(kept)
    return out


def _snapped(given: Structure, symprec: float) -> tuple[Structure | None, str | None]:
    """(snapped structure with spacegroup and symmetrize_max_shift, None) or (None, why)."""
    import numpy as np
    from ase.spacegroup.symmetrize import check_symmetry, refine_symmetry
    from pymatgen.io.ase import AseAtomsAdaptor

    from autoperi.data.checks import is_finite
    from autoperi.eval.validity import MIN_DISTANCE, minimum_distances

    if not is_finite(given):  # before spglib, which would crash the process
        return None, "non-finite cell or coordinates"
    if not given.is_ordered or len(given) == 0:
        return None, "not an ordered structure with atoms"
    atoms = AseAtomsAdaptor.get_atoms(given)
    atoms.info.clear()  # the properties travel separately, not through ASE
    # One round snaps the cell to the group found at symprec, then the atoms to the group
    # found again on that cell, which can differ; repeat until the snapped structure's exact
    # group is the one found at symprec (measured: at most 3 rounds on 900
    # generated crystals at 0.2 and 0.5 Å)
    for _ in range(SNAP_ROUNDS):
        try:
            exact = refine_symmetry(atoms, symprec=symprec).number
            found = check_symmetry(atoms, symprec=symprec).number
        except Exception as exc:  # noqa: BLE001 - spglib's errors are plain exceptions
            return None, f"spglib at symprec {symprec}: {str(exc) or type(exc).__name__}"
        if exact == found:
            break
    else:
        return None, (f"no self-consistent symmetry at symprec {symprec} after {SNAP_ROUNDS} "
                      f"rounds (exact {exact}, found {found})")
    frac = atoms.get_scaled_positions(wrap=True)
    snapped = Structure(atoms.cell.array, given.species, frac)
    if minimum_distances([snapped])[0] < MIN_DISTANCE:
        return None, f"atoms closer than {MIN_DISTANCE} Å after snapping at symprec {symprec}"
    move = frac - given.frac_coords
    move -= np.round(move)  # minimum image
    move -= move.mean(axis=0)  # a rigid translation is not a move
    shift = np.linalg.norm(move @ snapped.lattice.matrix, axis=1).max()
    snapped.properties = {"spacegroup": int(exact),
                          "symmetrize_max_shift": float(shift)}
    return snapped, None


def _charge_neutral(atomic_numbers: Sequence[int]) -> bool:
    from autoperi.eval.validity import compositional_validity

    return bool(compositional_validity([Composition(
        {Element.from_Z(z).symbol: atomic_numbers.count(z) for z in set(atomic_numbers)})])[0])


def clash_of(model: FlowModel, distance: float | None = None, scale: float | None = None,
             after: float = ClashFloor.after) -> ClashFloor:
    """The clash floor a sampling call uses: each of distance and scale as given, else the
    model's default (`model.clash_distance`, `model.clash_scale`)."""
    return ClashFloor(model.config.clash_distance if distance is None else distance,
                      model.config.clash_scale if scale is None else scale, after)


def timed(fn, *args, **kwargs):
    """(result, seconds) of a call."""
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def _model(model, device) -> FlowModel:
    if isinstance(model, FlowModel):
        return model.eval()
    return load_model(model, device)[0]


def _check_targets(model: FlowModel, targets: dict) -> None:
    names = model.stats.conditions
    unknown = sorted(set(targets) - set(names))
    if unknown:
        raise ValueError(f"this model cannot aim at {unknown}; it is conditioned on "
                         f"{list(names) or 'nothing'}")


def _conditions(model: FlowModel, targets: dict, b: int, generator: torch.Generator):
    names = model.stats.conditions
    if not targets:
        return None, None
    raw = {}
    for name, (low, high) in targets.items():
        u = torch.rand(b, generator=generator, dtype=torch.float64)
        raw[name] = (low + (high - low) * u).float()
    scaled = model.stats.scaler.transform(raw)
    values = torch.zeros(b, len(names))
    mask = torch.zeros(b, len(names), dtype=torch.bool)
    for p, name in enumerate(names):
        if name in scaled:
            values[:, p], mask[:, p] = scaled[name], True
    return values, mask


@torch.no_grad()
def predict_properties(model: FlowModel, batch: CrystalBatch) -> dict[str, torch.Tensor]:
    """The model's own property predictions for clean crystals (t = 1, no condition)."""
    device = next(model.parameters()).device
    batch = batch.to(device, torch.float32)
    types = torch.nn.functional.one_hot(model.stats.type_index(batch.atomic_numbers),
                                        len(model.stats.vocab)).float()
    ones = torch.ones(len(batch), device=device)
    out = model(types, batch.frac_coords, lattice_to_y(batch.lattice.double()).float(),
                batch.num_atoms, ones, ones)
    scaled = {name: out.properties[:, p] for p, name in enumerate(model.stats.heads)}
    return {k: v.cpu() for k, v in model.stats.scaler.inverse(scaled).items()}


def _with_predictions(model: FlowModel, batch: CrystalBatch) -> list[Structure]:
    predictions = predict_properties(model, batch)
    structures = batch.to_structures()
    for b, s in enumerate(structures):
        s.properties.update({f"predicted_{k}": float(v[b]) for k, v in predictions.items()})
    return structures
