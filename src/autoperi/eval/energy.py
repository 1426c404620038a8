"""Energies, relaxations and energy above the convex hull from a pretrained universal
interatomic potential (MLIP) that runs offline.

The default potential is CHGNet 0.3.0 (PyPI package ``chgnet``, extra ``autoperi[mlip]``):
its weights ship inside the wheel and are read from the installed package, so nothing is
downloaded at run time. Any object following the small `Potential` protocol can replace it.

One evaluation, one potential. Energies of generated structures, of their relaxed forms and
of the reference entries that build the convex hull must all come from the same potential
(`reference_entries` computes them with it). Mixing potentials, or MLIP energies with the
DFT energies stored in a dataset, shifts the hull by the systematic difference between the
two and makes ``e_above_hull`` meaningless.

Failures are per structure and never fatal: a structure the potential cannot handle gets
NaN and a sentence in ``reasons``; the others go on.

Relaxation (`relax`) is batched: all structures in flight go through one batched forward
pass of the potential per step, and each runs its own FIRE optimiser (the ASE algorithm and
defaults) on the same variables as ASE's ``FrechetCellFilter``: positions in the undeformed
cell plus the matrix logarithm of the cell deformation, scaled by the number of atoms.
Converged or failed structures leave the batch and waiting ones take their place.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import warnings
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from ase.calculators.calculator import Calculator, all_changes
from ase.stress import full_3x3_to_voigt_6_stress
from ase.units import GPa
from pymatgen.core import Composition, Lattice, Structure
from pymatgen.io.ase import AseAtomsAdaptor
from tqdm.auto import tqdm

from autoperi.data.checks import Limits, structure_problems
from autoperi.geometry.graph import radius_graph
from autoperi.geometry.torus import shortest_displacement, wrap

log = logging.getLogger(__name__)

MIN_DISTANCE = 0.5  # Å: closer atoms are overlapping (CDVAE validity)
MIN_VOLUME_PER_ATOM = 1.5  # Å^3: denser cells are absurd (diamond has 5.7 Å^3/atom)
MAX_VOLUME_CHANGE = 10.0  # a relaxation that changes the volume more than 10x has exploded
RELAXATION_ENERGY_THRESHOLD = 0.5  # eV/atom: E_unrelaxed - E_relaxed below this is "close"
STABLE_THRESHOLDS = (0.0, 0.1)  # eV/atom above hull counted as stable / metastable
HULL_TOLERANCE = 1e-6  # eV/atom: numerical slack when comparing with a threshold


# --------------------------------------------------------------------------- potentials
@dataclass(frozen=True)
class Prediction:
    """What a potential says about S structures; NaN (or None) where `reasons[k]` is set.

    energy [S] eV (whole cell); forces: S arrays [n_k, 3] eV/Å; stress [S, 3, 3] eV/Å^3 in
    the ASE convention, (1/V) dE/d(strain): negative for a compressed cell.
    """

    energy: np.ndarray
    forces: list[np.ndarray | None]
    stress: np.ndarray | None
    reasons: list[str | None]


@runtime_checkable
class Potential(Protocol):
    """An interatomic potential evaluated on a batch of structures at once."""

    name: str

    def predict(self, structures: Sequence[Structure], forces: bool = True) -> Prediction:
        """Energies (and forces and stress when `forces`), one batched evaluation."""
        ...


class CHGNetPotential:
    """CHGNet (Deng et al., Nat. Mach. Intell. 2023) with the weights from its wheel.

    The model is loaded on first use. Forces and stress come from one backward pass through
    the fractional coordinates and lattice of CHGNet's own graphs (F = -dE/dr,
    stress = L^T dE/dL / V at fixed fractional coordinates), which is what CHGNet computes
    through its strain variable, without building a graph for second derivatives.

    max_atoms_per_forward: atoms per batched forward pass. On one CPU thread ~64 atoms
    (several small crystals) was the fastest per structure, and 512 was 25 % slower than
    one crystal at a time (activations fall out of cache; bench/relax.py); raise it on a GPU.
    """

    def __init__(self, model_name: str = "0.3.0", max_atoms_per_forward: int = 64,
                 device: str = "cpu"):
        self.model_name = model_name
        self.name = f"CHGNet-{model_name}"
        self.max_atoms_per_forward = max_atoms_per_forward
        self.device = device
        self._model = None

    @property
    def model(self):
        if self._model is None:
            self._model = self._load()
        return self._model

    @property
    def weights_path(self) -> Path:
        """The checkpoint inside the installed chgnet package (no network involved)."""
        import chgnet

        folder = Path(chgnet.__file__).parent / "pretrained" / self.model_name
        found = sorted(folder.glob("*.pth.tar"))
        if not found:
            raise FileNotFoundError(f"no CHGNet {self.model_name} weights under {folder}")
        return found[0]

    def _load(self):
        try:
            from chgnet.model import CHGNet
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(
                "the MLIP is not installed: pip install 'autoperi[mlip]' (CHGNet)") from exc
        with contextlib.redirect_stdout(io.StringIO()):  # CHGNet prints on load
            model = CHGNet.load(model_name=self.model_name, use_device=self.device,
                                verbose=False)
        model.eval()
        for parameter in model.parameters():
            parameter.requires_grad_(False)  # only input gradients are ever needed
        model.graph_converter.set_isolated_atom_response("ignore")  # we report them
        return model

    def predict(self, structures: Sequence[Structure], forces: bool = True) -> Prediction:
        model = self.model
        count = len(structures)
        energy = np.full(count, np.nan)
        force_list: list[np.ndarray | None] = [None] * count
        stress = np.full((count, 3, 3), np.nan) if forces else None
        reasons: list[str | None] = [None] * count
        graphs = {}
        for k, structure in enumerate(structures):
            try:
                graph = model.graph_converter(structure)
            except Exception as exc:  # noqa: BLE001 - reported per structure
                reasons[k] = f"{self.name} could not build its graph: {_describe(exc)}"
                continue
            centers = graph.atom_graph.reshape(-1, 2)[:, 0]
            lonely = len(structure) - len(torch.unique(centers))
            if lonely:
                cutoff = model.graph_converter.atom_graph_cutoff
                reasons[k] = (f"{lonely} atom(s) have no neighbour within {cutoff} Å: "
                              f"outside the domain of {self.name}")
                continue
            graphs[k] = graph
        keys = list(graphs)
        sizes = [len(structures[k]) for k in keys]
        for chunk in _chunks(keys, sizes, self.max_atoms_per_forward):
            self._run(chunk, graphs, forces, energy, force_list, stress, reasons)
        return Prediction(energy, force_list, stress, reasons)

    def _run(self, chunk, graphs, forces, energy, force_list, stress, reasons) -> None:
        """One batched forward (+ backward); on an error, retry one by one to isolate it."""
        try:
            outputs = self._forward([graphs[k] for k in chunk], forces)
        except (RuntimeError, ValueError, IndexError) as exc:
            if len(chunk) > 1:
                for k in chunk:
                    self._run([k], graphs, forces, energy, force_list, stress, reasons)
            else:
                reasons[chunk[0]] = f"{self.name} failed: {_describe(exc)}"
            return
        for j, k in enumerate(chunk):
            energy[k] = outputs[0][j]
            if forces:
                force_list[k] = outputs[1][j]
                stress[k] = outputs[2][j]

    def _forward(self, graphs, forces: bool):
        model = self.model
        graphs = [g.to(self.device) for g in graphs]
        with warnings.catch_warnings(), torch.set_grad_enabled(forces):
            warnings.simplefilter("ignore", UserWarning)  # CHGNet's tensor(list) warning
            out = model(graphs, task="e")
            per_atom = out["e"]
            n = torch.tensor([len(g.atomic_number) for g in graphs], device=per_atom.device)
            total = per_atom * n if model.is_intensive else per_atom  # [B] eV
            if not forces:
                return total.detach().double().cpu().numpy(), None, None
            leaves = [g.atom_frac_coord for g in graphs] + [g.lattice for g in graphs]
            grads = torch.autograd.grad(total.sum(), leaves)
        force_out, stress_out = [], []
        for j, g in enumerate(graphs):
            lattice = g.lattice.detach().double().cpu().numpy()
            d_frac = grads[j].double().cpu().numpy()  # dE/d(frac) [n, 3]
            d_lat = grads[len(graphs) + j].double().cpu().numpy()  # dE/dL [3, 3]
            # r = f L  =>  dE/dr = dE/df L^-T ;  E(f, L(1 + e))  =>  dE/de = L^T dE/dL
            force_out.append(-np.linalg.solve(lattice, d_frac.T).T)
            sigma = lattice.T @ d_lat / abs(np.linalg.det(lattice))
            stress_out.append(0.5 * (sigma + sigma.T))
        return total.detach().double().cpu().numpy(), force_out, stress_out


@functools.lru_cache(maxsize=1)
def default_potential() -> CHGNetPotential:
    """The shared default potential (CHGNet 0.3.0, loaded lazily on first prediction)."""
    return CHGNetPotential()


def _chunks(keys: list, sizes: list[int], max_atoms: int) -> list[list]:
    """Consecutive groups of keys whose atom counts add up to at most max_atoms (>= 1 key)."""
    groups, current, total = [], [], 0
    for key, size in zip(keys, sizes, strict=True):
        if current and total + size > max_atoms:
            groups.append(current)
            current, total = [], 0
        current.append(key)
        total += size
    if current:
        groups.append(current)
    return groups


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


class PotentialCalculator(Calculator):
    """An ASE calculator around any `Potential`, one structure per call (for ASE
    optimisers, molecular dynamics, or as the per-structure baseline of bench/relax.py)."""

    implemented_properties = ("energy", "free_energy", "forces", "stress")

    def __init__(self, potential: Potential | None = None, **kwargs):
        super().__init__(**kwargs)
        self.potential = potential or default_potential()

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        structure = AseAtomsAdaptor.get_structure(self.atoms)
        pred = self.potential.predict([structure], forces=True)
        if pred.reasons[0]:
            raise RuntimeError(pred.reasons[0])
        self.results = {
            "energy": float(pred.energy[0]),
            "free_energy": float(pred.energy[0]),
            "forces": pred.forces[0],
            "stress": full_3x3_to_voigt_6_stress(pred.stress[0]),
        }


# --------------------------------------------------------------------------- energies
@dataclass(frozen=True)
class Energies:
    """Energy per atom in eV/atom, [S], NaN where `reasons[k]` says why."""

    per_atom: np.ndarray
    reasons: list[str | None]
    potential: str

    def __array__(self, dtype=None, copy=None):
        return self.per_atom if dtype is None else self.per_atom.astype(dtype)

    def __len__(self) -> int:
        return len(self.per_atom)


def input_problem(structure: Structure) -> str | None:
    """Why a structure cannot be given to a potential (None: it can). Overlapping atoms
    (< 0.5 Å), isolated atoms (no neighbour within 6 Å), absurd density, bad numbers."""
    problems = structure_problems(structure, Limits(max_atoms=10**6,
                                                    min_distance=MIN_DISTANCE))
    if problems:
        return "; ".join(problems)
    per_atom = structure.volume / len(structure)
    if per_atom < MIN_VOLUME_PER_ATOM:
        return (f"absurdly dense cell: {per_atom:.3g} Å^3 per atom "
                f"(< {MIN_VOLUME_PER_ATOM} Å^3)")
    return None


def energies(structures: Sequence[Structure], potential: Potential | None = None,
             batch_size: int = 64, progress: bool = True) -> Energies:
    """Potential energy per atom of each structure as given (no relaxation), [S] eV/atom.

    NaN with a reason for structures outside the potential's domain (overlapping or
    isolated atoms, absurd density) or on which it fails; the others are unaffected.
    """
    pot = potential or default_potential()
    out = np.full(len(structures), np.nan)
    reasons: list[str | None] = [input_problem(s) for s in structures]
    usable = [k for k, r in enumerate(reasons) if r is None]
    for lo in tqdm(range(0, len(usable), batch_size), desc="energies", disable=not progress):
        chunk = usable[lo:lo + batch_size]
        pred = pot.predict([structures[k] for k in chunk], forces=False)
        for j, k in enumerate(chunk):
            reasons[k] = pred.reasons[j]
            if pred.reasons[j] is None:
                value = pred.energy[j] / len(structures[k])
                if np.isfinite(value):
                    out[k] = value
                else:
                    reasons[k] = f"{pot.name} returned a non-finite energy"
    return Energies(out, reasons, pot.name)


# --------------------------------------------------------------------------- relaxation
@dataclass(frozen=True)
class RelaxResult:
    """Per-structure outcome of `relax`, arrays [S]; energies in eV/atom.

    rmsd: root-mean-square displacement of the atoms (Å) between the input and relaxed
    positions, our own periodic measure: fractional displacements taken on the torus
    (shortest image), the mean displacement (a rigid translation) removed, then mapped to Å
    with the relaxed lattice. It measures how far the atoms moved inside the cell; the cell
    change is `volume_ratio` (V_relaxed / V_input). max_force: the largest generalized
    force (atoms and cell, the FrechetCellFilter convention) at the last evaluation, eV/Å.
    """

    structures: list[Structure | None]
    e_unrelaxed: np.ndarray
    e_relaxed: np.ndarray
    rmsd: np.ndarray
    volume_ratio: np.ndarray
    converged: np.ndarray
    steps: np.ndarray
    max_force: np.ndarray
    reasons: list[str | None]
    potential: str

    @property
    def relaxation_energy(self) -> np.ndarray:
        """E_unrelaxed - E_relaxed in eV/atom, [S] (>= 0 up to optimiser noise)."""
        return self.e_unrelaxed - self.e_relaxed

    @property
    def low_relaxation_energy(self) -> np.ndarray:
        """True where the relaxation energy is below 0.5 eV/atom (False where unknown)."""
        with np.errstate(invalid="ignore"):
            return self.relaxation_energy < RELAXATION_ENERGY_THRESHOLD

    def __len__(self) -> int:
        return len(self.structures)


@dataclass(frozen=True)
class FireParams:
    """ASE's FIRE defaults (Bitzek et al., PRL 97, 170201, 2006)."""

    dt: float = 0.1
    maxstep: float = 0.2
    dtmax: float = 1.0
    n_min: int = 5
    finc: float = 1.1
    fdec: float = 0.5
    astart: float = 0.1
    fa: float = 0.99


class _Flight:
    """FIRE state of the structures in flight; per-atom arrays padded to the largest.

    Variables (as ASE's FrechetCellFilter): u, positions in the undeformed cell [B, M, 3],
    and X = log(F) [B, 3, 3] with F the deformation gradient: lattice = L0 F^T, r = u F^T.
    The optimiser sees (u, n X) and the forces (f F, dE/dX adjoint / n).
    """

    fields = ("index", "num_atoms", "lattice0", "log_deform", "ref_pos", "vel_atoms",
              "vel_cell", "dt", "alpha", "n_pos", "started", "steps", "e0", "volume0",
              "cell_factor")
    padded = ("ref_pos", "vel_atoms")

    def __init__(self, **arrays):
        self.__dict__.update(arrays)

    @classmethod
    def start(cls, index: list[int], structures: Sequence[Structure], fire: FireParams):
        b = len(index)
        n = np.array([len(structures[k]) for k in index])
        m = int(n.max())
        ref = np.zeros((b, m, 3))
        for j, k in enumerate(index):
            ref[j, :n[j]] = structures[k].cart_coords
        lattice0 = np.stack([structures[k].lattice.matrix for k in index])
        return cls(index=np.array(index), num_atoms=n, lattice0=lattice0,
                   log_deform=np.zeros((b, 3, 3)), ref_pos=ref, vel_atoms=np.zeros((b, m, 3)),
                   vel_cell=np.zeros((b, 3, 3)), dt=np.full(b, fire.dt),
                   alpha=np.full(b, fire.astart), n_pos=np.zeros(b, dtype=int),
                   started=np.zeros(b, dtype=bool), steps=np.zeros(b, dtype=int),
                   e0=np.full(b, np.nan), volume0=np.abs(np.linalg.det(lattice0)),
                   cell_factor=n.astype(float))

    def __len__(self) -> int:
        return len(self.index)

    def take(self, keep: np.ndarray) -> _Flight:
        out = {f: getattr(self, f)[keep] for f in self.fields}
        m = int(out["num_atoms"].max()) if keep.any() else 0
        for f in self.padded:
            out[f] = out[f][:, :m]
        return _Flight(**out)

    def join(self, other: _Flight | None) -> _Flight:
        if other is None or not len(other):
            return self
        if not len(self):
            return other
        m = max(self.ref_pos.shape[1], other.ref_pos.shape[1])
        out = {}
        for f in self.fields:
            a, b = getattr(self, f), getattr(other, f)
            if f in self.padded:
                a, b = _pad_atoms(a, m), _pad_atoms(b, m)
            out[f] = np.concatenate([a, b])
        return _Flight(**out)


def _pad_atoms(a: np.ndarray, m: int) -> np.ndarray:
    return np.pad(a, ((0, 0), (0, m - a.shape[1]), (0, 0)))


def _expm(x: np.ndarray) -> np.ndarray:
    return torch.linalg.matrix_exp(torch.from_numpy(x)).numpy()


def _log_deform_force(log_deform: np.ndarray, cell_grad: np.ndarray) -> np.ndarray:
    """Force on X = log(F) from the force G on F, [B, 3, 3]: the adjoint of the Fréchet
    derivative of expm at X applied to G, which is the derivative of expm at X^T in the
    direction G: the upper-right block of expm([[X^T, G], [0, X^T]])."""
    b = len(log_deform)
    block = np.zeros((b, 6, 6))
    xt = np.swapaxes(log_deform, 1, 2)
    block[:, :3, :3] = xt
    block[:, 3:, 3:] = xt
    block[:, :3, 3:] = cell_grad
    return _expm(block)[:, :3, 3:]


def generalized_forces(forces: np.ndarray, stress: np.ndarray, lattice: np.ndarray,
                       log_deform: np.ndarray, cell_factor: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray]:
    """FrechetCellFilter forces for a batch: atoms [B, M, 3] (forces [B, M, 3] in eV/Å
    mapped to the undeformed cell) and cell [B, 3, 3] (from stress [B, 3, 3] eV/Å^3)."""
    deform = _expm(log_deform)  # F [B, 3, 3]
    volume = np.abs(np.linalg.det(lattice))
    virial = -volume[:, None, None] * stress
    atoms = np.einsum("bmi,bij->bmj", forces, deform)
    cell_grad = virial @ np.linalg.inv(np.swapaxes(deform, 1, 2))
    cell = _log_deform_force(log_deform, cell_grad) / cell_factor[:, None, None]
    return atoms, cell


def relax(structures: Sequence[Structure], fmax: float = 0.1, steps: int = 500,
          relax_cell: bool = True, potential: Potential | None = None,
          batch_size: int = 32, fire: FireParams = FireParams(),
          progress: bool = True, pressure: float = 0.0) -> RelaxResult:
    """Relax positions (and the cell) of each structure with the potential, batched.

    Up to `batch_size` structures are in flight; each step evaluates them all in one
    batched call of the potential, then takes one FIRE step per structure (ASE's FIRE on
    ASE's FrechetCellFilter variables when `relax_cell`, so the path matches
    `FIRE(FrechetCellFilter(atoms)).run(fmax, steps)`). A structure stops when its largest
    generalized force is below `fmax` eV/Å (converged) or after `steps` steps. One that
    explodes (non-finite energy or forces, volume changed more than 10x, atoms closer than
    0.5 Å, absurd density, or a failure of the potential) stops with a reason; the batch
    goes on. `pressure` (GPa, hydrostatic; ASE's `scalar_pressure` is pressure x
    ase.units.GPa, in eV/Å^3) makes the cell minimise the enthalpy E + pV; the energies
    reported stay E.
    """
    if fmax <= 0 or steps < 0 or batch_size < 1:
        raise ValueError(f"need fmax > 0, steps >= 0, batch_size >= 1; got {fmax}, {steps},"
                         f" {batch_size}")
    pot = potential or default_potential()
    count = len(structures)
    result = {
        "structures": [None] * count, "e_unrelaxed": np.full(count, np.nan),
        "e_relaxed": np.full(count, np.nan), "rmsd": np.full(count, np.nan),
        "volume_ratio": np.full(count, np.nan), "converged": np.zeros(count, dtype=bool),
        "steps": np.zeros(count, dtype=int), "max_force": np.full(count, np.nan),
        "reasons": [input_problem(s) for s in structures],
    }
    pending = deque(k for k in range(count) if result["reasons"][k] is None)
    flight: _Flight | None = None
    bar = tqdm(total=count, desc="relax", disable=not progress, unit="crystal")
    bar.update(count - len(pending))
    while pending or (flight is not None and len(flight)):
        in_flight = 0 if flight is None else len(flight)
        new = [pending.popleft() for _ in range(min(len(pending), batch_size - in_flight))]
        if new:  # waiting structures take the places of finished ones
            started = _Flight.start(new, structures, fire)
            flight = started if flight is None else flight.join(started)
        done = _relax_step(flight, structures, pot, fmax, steps, relax_cell, fire, result,
                           pressure * GPa)
        bar.update(int(done.sum()))
        flight = flight.take(~done)
    bar.close()
    return RelaxResult(**result, potential=pot.name)


def _relax_step(flight: _Flight, structures, pot: Potential, fmax: float, max_steps: int,
                relax_cell: bool, fire: FireParams, result: dict,
                pressure: float) -> np.ndarray:
    """Evaluate every structure in flight once, record the finished ones, step the rest
    (`pressure` in eV/Å^3). Returns the finished mask [B]."""
    b = len(flight)
    deform = _expm(flight.log_deform)  # [B, 3, 3]
    deform_t = np.swapaxes(deform, 1, 2)
    lattice = flight.lattice0 @ deform_t  # rows a, b, c
    positions = flight.ref_pos @ deform_t  # [B, M, 3]
    species = [structures[k].species for k in flight.index]
    current = [Structure(Lattice(lattice[j]), species[j], positions[j, :flight.num_atoms[j]],
                         coords_are_cartesian=True) for j in range(b)]
    problems = _geometry_problems(current, lattice, flight)
    ok = [j for j in range(b) if problems[j] is None]
    pred = pot.predict([current[j] for j in ok], forces=True)
    m = positions.shape[1]
    forces = np.zeros((b, m, 3))
    stress = np.zeros((b, 3, 3))
    energy = np.full(b, np.nan)
    for i, j in enumerate(ok):
        if pred.reasons[i] is not None:
            problems[j] = pred.reasons[i]
            continue
        n = flight.num_atoms[j]
        forces[j, :n] = pred.forces[i]
        stress[j] = pred.stress[i]
        energy[j] = pred.energy[i] / n
        if not (np.isfinite(energy[j]) and np.all(np.isfinite(pred.forces[i]))
                and np.all(np.isfinite(pred.stress[i]))):
            problems[j] = "non-finite energy, forces or stress"
    first = flight.steps == 0
    flight.e0[first] = energy[first]
    # an external pressure p adds p to the stress the cell feels (the pV of the enthalpy)
    g_atoms, g_cell = generalized_forces(forces, stress + pressure * np.eye(3), lattice,
                                         flight.log_deform, flight.cell_factor)
    if not relax_cell:
        g_cell[:] = 0.0
    fnorm = np.maximum(np.linalg.norm(g_atoms, axis=2).max(axis=1),
                       np.linalg.norm(g_cell, axis=2).max(axis=1))
    failed = np.array([p is not None for p in problems])
    converged = ~failed & (fnorm < fmax)
    done = failed | converged | (flight.steps >= max_steps)
    for j in np.nonzero(done)[0]:
        _record(result, flight, j, current[j], energy[j], fnorm[j], converged[j],
                problems[j], structures)
    go = ~done
    if go.any():
        _fire_step(flight, go, g_atoms, g_cell, fire)
    return done


def _geometry_problems(current: list[Structure], lattice: np.ndarray,
                       flight: _Flight) -> list[str | None]:
    """Explosion checks for the structures in flight: volume change, density, overlaps."""
    volume = np.abs(np.linalg.det(lattice))
    ratio = volume / flight.volume0
    problems: list[str | None] = [None] * len(current)
    for j in range(len(current)):
        if not np.all(np.isfinite(lattice[j])) or not np.isfinite(ratio[j]):
            problems[j] = "non-finite cell"
        elif ratio[j] > MAX_VOLUME_CHANGE or ratio[j] < 1 / MAX_VOLUME_CHANGE:
            problems[j] = f"volume changed {ratio[j]:.3g}x (limit {MAX_VOLUME_CHANGE:g}x)"
        elif volume[j] / flight.num_atoms[j] < MIN_VOLUME_PER_ATOM:
            problems[j] = "absurdly dense cell"
    check = [j for j in range(len(current)) if problems[j] is None]
    if check:
        frac = torch.from_numpy(np.concatenate([current[j].frac_coords for j in check]))
        lat = torch.from_numpy(lattice[check])
        counts = torch.tensor([len(current[j]) for j in check])
        graph = radius_graph(frac, lat, counts, MIN_DISTANCE)
        if graph.num_edges:
            owner = torch.repeat_interleave(torch.arange(len(check)), counts)
            for c in torch.unique(owner[graph.edge_index[1]]).tolist():
                problems[check[c]] = f"atoms closer than {MIN_DISTANCE} Å"
    return problems


def _record(result: dict, flight: _Flight, j: int, structure: Structure, energy: float,
            fnorm: float, converged: bool, problem: str | None, structures) -> None:
    k = int(flight.index[j])
    steps = int(flight.steps[j])
    result["steps"][k] = steps
    result["e_unrelaxed"][k] = flight.e0[j]
    if problem is not None:
        result["reasons"][k] = f"exploded after {steps} steps: {problem}" if steps else problem
        log.info("structure %d: %s", k, result["reasons"][k])
        return
    original = structures[k]
    frac = wrap(torch.from_numpy(structure.frac_coords)).numpy()
    relaxed = Structure(structure.lattice, structure.species, frac,
                        properties=dict(original.properties))
    result["structures"][k] = relaxed
    result["e_relaxed"][k] = energy
    result["converged"][k] = bool(converged)
    result["max_force"][k] = fnorm
    result["volume_ratio"][k] = relaxed.volume / original.volume
    result["rmsd"][k] = _rmsd(original.frac_coords, structure.frac_coords,
                              relaxed.lattice.matrix)


def _rmsd(frac_initial: np.ndarray, frac_final: np.ndarray, lattice: np.ndarray) -> float:
    """Periodic RMSD in Å after removing the mean (rigid) displacement."""
    delta = shortest_displacement(torch.from_numpy(frac_final - frac_initial)).numpy()
    delta = delta - delta.mean(axis=0)
    cart = delta @ lattice
    return float(np.sqrt((cart**2).sum(axis=1).mean()))


def _fire_step(flight: _Flight, go: np.ndarray, g_atoms: np.ndarray, g_cell: np.ndarray,
               fire: FireParams) -> None:
    """One FIRE step (ASE's algorithm) for the structures in `go`, vectorized, in place."""
    va, vc = flight.vel_atoms, flight.vel_cell
    dot = (g_atoms * va).sum(axis=(1, 2)) + (g_cell * vc).sum(axis=(1, 2))
    g2 = (g_atoms**2).sum(axis=(1, 2)) + (g_cell**2).sum(axis=(1, 2))
    v2 = (va**2).sum(axis=(1, 2)) + (vc**2).sum(axis=(1, 2))
    started = flight.started & go
    downhill = started & (dot > 0.0)
    uphill = started & ~(dot > 0.0)
    # downhill: mix the velocity towards the force, maybe speed up
    a = flight.alpha[:, None, None]
    scale = np.where(downhill, np.sqrt(v2) / np.sqrt(np.where(g2 > 0, g2, 1.0)), 0.0)
    mix = downhill[:, None, None]
    va[:] = np.where(mix, (1 - a) * va + a * g_atoms * scale[:, None, None], va)
    vc[:] = np.where(mix, (1 - a) * vc + a * g_cell * scale[:, None, None], vc)
    faster = downhill & (flight.n_pos > fire.n_min)
    flight.dt[faster] = np.minimum(flight.dt[faster] * fire.finc, fire.dtmax)
    flight.alpha[faster] *= fire.fa
    flight.n_pos[downhill] += 1
    # uphill: stop, slow down
    va[uphill] = 0.0
    vc[uphill] = 0.0
    flight.alpha[uphill] = fire.astart
    flight.dt[uphill] *= fire.fdec
    flight.n_pos[uphill] = 0
    # Euler step with the step length capped per structure
    dt = np.where(go, flight.dt, 0.0)[:, None, None]
    va += dt * g_atoms
    vc += dt * g_cell
    dr_atoms, dr_cell = dt * va, dt * vc
    norm = np.sqrt((dr_atoms**2).sum(axis=(1, 2)) + (dr_cell**2).sum(axis=(1, 2)))
    shrink = np.where(norm > fire.maxstep, fire.maxstep / np.where(norm > 0, norm, 1.0), 1.0)
    flight.ref_pos += dr_atoms * shrink[:, None, None]
    flight.log_deform += dr_cell * (shrink / flight.cell_factor)[:, None, None]
    flight.started |= go
    flight.steps[go] += 1


# --------------------------------------------------------------------------- convex hull
@dataclass(frozen=True)
class HullResult:
    """Energy above the hull of the reference entries, eV/atom, [S] (NaN with a reason).

    Negative where a structure lies below the references' hull (it would extend the hull).
    `stable` / `metastable`: at or below 0.0 / 0.1 eV/atom (up to 1e-6 eV/atom numerical
    slack); False where unknown.
    """

    e_above_hull: np.ndarray
    reasons: list[str | None]

    def below(self, threshold: float) -> np.ndarray:
        with np.errstate(invalid="ignore"):
            return self.e_above_hull <= threshold + HULL_TOLERANCE

    @property
    def stable(self) -> np.ndarray:
        return self.below(STABLE_THRESHOLDS[0])

    @property
    def metastable(self) -> np.ndarray:
        return self.below(STABLE_THRESHOLDS[1])

    def __len__(self) -> int:
        return len(self.e_above_hull)


def reference_entries(structures: Sequence[Structure], potential: Potential | None = None,
                      relaxed: bool = False, progress: bool = True, **relax_kwargs) -> list:
    """PDEntry per usable reference structure with the potential's energy (relaxed first
    when `relaxed`). Structures the potential fails on are skipped and logged. Use the SAME
    potential for the structures whose e_above_hull you ask for."""
    from pymatgen.analysis.phase_diagram import PDEntry

    pot = potential or default_potential()
    if relaxed:
        rel = relax(structures, potential=pot, progress=progress, **relax_kwargs)
        per_atom, reasons = rel.e_relaxed, rel.reasons
    else:
        got = energies(structures, pot, progress=progress)
        per_atom, reasons = got.per_atom, got.reasons
    entries = []
    for k, s in enumerate(structures):
        if np.isfinite(per_atom[k]):
            entries.append(PDEntry(s.composition, float(per_atom[k]) * len(s),
                                   name=f"{s.composition.reduced_formula}#{k}",
                                   attribute={"potential": pot.name, "index": k}))
        else:
            log.warning("reference %d (%s) skipped: %s", k, s.composition.reduced_formula,
                        reasons[k])
    return entries


def e_above_hull(structures: Sequence[Structure | Composition],
                 energies_per_atom: Sequence[float] | np.ndarray,
                 reference_entries: Sequence) -> HullResult:
    """Energy above the convex hull (eV/atom) of each structure, [S].

    energies_per_atom [S] eV/atom and the reference entries (pymatgen entries, e.g. from
    `reference_entries`) must come from the same potential. The hull of each chemical
    system is built from the references within it (pymatgen PhaseDiagram). NaN with a
    reason when the energy is unknown or a pure-element reference is missing.
    """
    from pymatgen.analysis.phase_diagram import PhaseDiagram

    values = np.asarray(energies_per_atom, dtype=float)
    if len(values) != len(structures):
        raise ValueError(f"{len(structures)} structures but {len(values)} energies")
    refs = list(reference_entries)
    elemental = {e.composition.elements[0] for e in refs if len(e.composition.elements) == 1}
    diagrams: dict[frozenset, PhaseDiagram] = {}
    out = np.full(len(values), np.nan)
    reasons: list[str | None] = [None] * len(values)
    for k, item in enumerate(structures):
        comp = item.composition if isinstance(item, Structure) else Composition(item)
        elements = frozenset(comp.elements)
        if not np.isfinite(values[k]):
            reasons[k] = "no energy"
            continue
        missing = sorted(str(e) for e in elements - elemental)
        if missing:
            reasons[k] = f"no pure-element reference for {', '.join(missing)}"
            continue
        if elements not in diagrams:
            inside = [e for e in refs if set(e.composition.elements) <= elements]
            diagrams[elements] = PhaseDiagram(inside, elements=sorted(elements))
        hull = diagrams[elements].get_hull_energy_per_atom(comp)
        out[k] = values[k] - hull
    return HullResult(out, reasons)
