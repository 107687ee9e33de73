"""Synthetic head CT volumes with haemorrhages, written as nnU-Net raw datasets.

The demo needs a source task and a related but different target task that a new user can run
without any data. Both are non-contrast head CT in Hounsfield units:

* source (TBI-like): intraparenchymal, subdural and epidural haematomas, i.e. compact blobs,
  crescents and lenses of blood;
* target (SAH-like): blood filling parts of the basal cisterns, Sylvian fissures and sulci, i.e.
  a thin branching pattern that follows the CSF spaces.

The anatomy is built analytically in millimetres in a head-centred frame (z superior, y posterior,
x left, the array order of an axial CT in LPS) and sampled on the requested grid, so the same
generator serves tiny test volumes and the demo's volumes alike. Every case is a pure function of
(seed, task, case index): re-running the demo re-creates identical data.
"""
from __future__ import annotations

import enum
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from scipy import ndimage

Task = Literal["tbi", "sah"]
TASKS: tuple[Task, ...] = ("tbi", "sah")
_TASK_STREAM = {"tbi": 1, "sah": 2}  # separates the random streams of the two tasks

# The demo's default grid: a head CT's field of view from skull base to vertex (144 x 216 x 216 mm)
# at coarse, anisotropic spacing. Measured on a 2-core CPU, one nnU-Net training iteration on the
# planned 24 x 48 x 48 patch costs a third of one on 32 x 56 x 56 (4 mm), which is what lets the
# demo train six networks in minutes.
DEFAULT_SHAPE: tuple[int, int, int] = (24, 48, 48)
DEFAULT_SPACING: tuple[float, float, float] = (6.0, 4.5, 4.5)


class Tissue(enum.IntEnum):
    """Tissue class of each voxel before any blood is added (returned for inspection and tests)."""

    AIR = 0
    SOFT_TISSUE = 1
    BONE = 2
    CSF = 3  # ventricles, cisterns, fissures, sulci, the thin layer under the skull
    GREY_MATTER = 4
    WHITE_MATTER = 5


# Mean attenuation in HU; each case draws its own value within +-the second number.
_HU = {
    Tissue.AIR: (-1000.0, 0.0),
    Tissue.SOFT_TISSUE: (40.0, 5.0),
    Tissue.CSF: (5.0, 3.0),
    Tissue.GREY_MATTER: (39.0, 2.0),
    Tissue.WHITE_MATTER: (27.0, 2.0),
}
_BONE_HU = (700.0, 1500.0)  # inner (diploe-like) to outer table; varies within the skull
# acute blood is 50-90 HU; the demo keeps to the denser half so that a few hundred iterations learn it
_BLOOD_HU = {"tbi": (65.0, 85.0), "sah": (60.0, 80.0)}


@dataclass(frozen=True)
class SyntheticCase:
    image: np.ndarray  # float32 HU, (z, y, x)
    label: np.ndarray  # uint8, 1 = blood
    tissue: np.ndarray  # uint8 Tissue codes before blood; CSF spaces are where SAH may lie
    spacing: tuple[float, float, float]  # mm, (z, y, x)


def case_rng(seed: int, task: Task, index: int) -> np.random.Generator:
    """The random stream of one case: independent of how many cases are generated before it."""
    if task not in _TASK_STREAM:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    return np.random.default_rng([seed, _TASK_STREAM[task], index])


def synthesize_case(
    rng: np.random.Generator,
    task: Task,
    shape: tuple[int, int, int] = DEFAULT_SHAPE,
    spacing: tuple[float, float, float] = DEFAULT_SPACING,
    noise_hu: float | None = None,
) -> SyntheticCase:
    """One head CT with haemorrhage of the given task.

    ``noise_hu`` overrides the per-case Gaussian noise level (3-5 HU); 0 gives the noise-free,
    unsmoothed volume, whose HU values are exactly the tissue values (used by tests).
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if len(shape) != 3 or min(shape) < 8:
        raise ValueError(f"shape must be three sizes (z, y, x) of at least 8 voxels, got {shape}")
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"spacing must be three positive mm values (z, y, x), got {spacing}")
    spacing = tuple(float(s) for s in spacing)
    anatomy = _Anatomy(rng, tuple(int(s) for s in shape), spacing)
    if task == "tbi":
        blood = _tbi_bleeds(rng, anatomy)
    else:
        blood = _sah(rng, anatomy)
    hu = anatomy.hu.copy()
    # image noise in brain on 5-6 mm head CT slices is a few HU
    sd = rng.uniform(3.0, 5.0) if noise_hu is None else float(noise_hu)
    if sd > 0:
        # scanner point spread: a slight blur, stronger in-plane voxels being smaller. It is applied
        # before the blood is painted so that labelled voxels keep blood's attenuation: nnU-Net's CT
        # normalisation takes its window from the labelled voxels, and bone blurred into the thin
        # extra-axial bleeds at 4.5 mm had stretched that window to ~40-290 HU, leaving blood and
        # brain a fraction of it apart.
        hu = ndimage.gaussian_filter(hu, sigma=[0.35, 0.5, 0.5])
    lo, hi = _BLOOD_HU[task]
    # blood density varies smoothly inside a bleed (clot vs. fresh blood)
    hu[blood] = (rng.uniform(lo, hi) + 3.0 * anatomy.smooth(8.0))[blood].clip(lo - 5, hi + 5)
    if sd > 0:
        hu = hu + rng.normal(0.0, sd, hu.shape)
    image = np.clip(hu, -1024.0, 3071.0).astype(np.float32)
    return SyntheticCase(image, blood.astype(np.uint8), anatomy.tissue.astype(np.uint8), spacing)


class _Anatomy:
    """A randomly posed and scaled head, its tissue map and its noise-free HU image."""

    def __init__(self, rng: np.random.Generator, shape: tuple[int, int, int],
                 spacing: tuple[float, float, float]) -> None:
        self.rng, self.shape, self.spacing = rng, shape, spacing
        # physical coordinates (mm) of voxel centres relative to the volume centre
        axes = [(np.arange(n) - (n - 1) / 2.0) * s for n, s in zip(shape, spacing)]
        p = np.stack(np.meshgrid(*axes, indexing="ij"))
        # per-case pose: scanner tilt and head yaw/roll of a few degrees, shift, overall size
        rot = _rotation(*np.deg2rad(rng.uniform([-10, -4, -4], [10, 4, 4])))
        scale = rng.uniform(0.92, 1.05) * rng.uniform(0.97, 1.03, size=3)
        shift = rng.uniform([-6, -8, -6], [6, 8, 6])
        q = np.einsum("ij,j...->i...", rot.T, p - shift[:, None, None, None]) / scale[:, None, None, None]
        self.z, self.y, self.x = q
        self._build(rng)

    def smooth(self, sigma_mm: float) -> np.ndarray:
        """Gaussian random field of unit standard deviation with correlation length ~sigma_mm."""
        f = ndimage.gaussian_filter(self.rng.standard_normal(self.shape),
                                    sigma=[sigma_mm / s for s in self.spacing], mode="wrap")
        return (f - f.mean()) / (f.std() + 1e-12)

    def _build(self, rng: np.random.Generator) -> None:
        z, y, x = self.z, self.y, self.x
        # cranial cavity: ellipsoid, its floor the anterior cranial fossa (high, in front) and the
        # middle fossa (lower); the posterior fossa is bounded by the ellipsoid itself
        radii = np.array([62.0, 84.0, 66.0]) * rng.uniform(0.96, 1.04, size=3)
        rho = np.sqrt((z / radii[0]) ** 2 + (y / radii[1]) ** 2 + (x / radii[2]) ** 2)
        mean_r = float(np.mean(radii))
        # orbital roofs at -28 in front; behind them the middle fossae sink to -48 on both sides
        # of the higher central skull base (sella and clivus)
        floor = -28.0 - (20.0 - 12.0 * np.exp(-(x / 14.0) ** 2)) / (1.0 + np.exp(-(y + 22.0) / 5.0))
        floor = np.where(y > 12.0, -np.inf, floor)  # posterior fossa reaches the ellipsoid
        cavity = (rho < 1.0) & (z > floor)
        thickness = 7.0 + 1.8 * self.smooth(25.0)  # skull thickness varies around the head
        depth_out = (rho - 1.0) * mean_r  # ~mm outside the inner table
        skull = (depth_out >= 0) & (depth_out < thickness)
        base = (rho < 1.0 + thickness / mean_r) & (z <= floor) & (z > floor - 14.0)  # skull base
        bone = (skull | base) & ~cavity
        scalp = (depth_out < thickness + rng.uniform(4.0, 7.0)) & ~bone & ~cavity
        # face and neck below the skull base: soft tissue, so the lowest slices are not empty
        neck = (rho < 1.0 + 12.0 / mean_r) & (z <= floor - 14.0) & (np.abs(y) < 70)

        tissue = np.full(self.shape, Tissue.AIR, dtype=np.uint8)
        tissue[scalp | neck] = Tissue.SOFT_TISSUE
        tissue[bone] = Tissue.BONE

        # depth below the inner table, in mm, for layering cortex, sulci and extra-axial bleeds
        self.depth = ndimage.distance_transform_edt(cavity, sampling=self.spacing)
        self.cavity = cavity
        tissue[cavity] = Tissue.WHITE_MATTER
        cortex = cavity & (self.depth < 2.0 + rng.uniform(3.0, 5.0) + 1.0 * self.smooth(10.0))
        tissue[cortex] = Tissue.GREY_MATTER
        # deep grey nuclei (basal ganglia and thalami) beside the ventricles
        for side in (-1.0, 1.0):
            nuclei = _ellipsoid(z, y, x, (2.0, -2.0, side * 20.0), (14.0, 24.0, 9.0))
            tissue[cavity & nuclei] = Tissue.GREY_MATTER
        # posterior fossa: cerebellum (greyish) and the brainstem
        post_fossa = cavity & (z < -28.0) & (y > 8.0)
        tissue[post_fossa] = Tissue.GREY_MATTER
        stem_center_y = 10.0 + 0.25 * (z + 20.0)  # the brainstem leans slightly backwards
        brainstem = ((y - stem_center_y) / 11.0) ** 2 + (x / 12.0) ** 2 < 1.0
        brainstem &= cavity & (z < -16.0)
        tissue[brainstem] = Tissue.WHITE_MATTER

        # CSF spaces
        subarachnoid = cavity & (self.depth < rng.uniform(1.0, 2.5))
        # sulci: thin clefts along the zero set of a random field, reaching into the cortex
        field = self.smooth(9.0)
        sulci = cavity & (np.abs(field) < 0.16) & (self.depth < rng.uniform(10.0, 15.0)) & (z > -30)
        interhemispheric = cavity & (np.abs(x) < 1.8) & ~((np.abs(y + 5.0) < 40.0) & (z < 25.0)) & (z > -28)
        ventricles = self._ventricles(rng) & cavity
        cisterns = {k: m & cavity for k, m in self._cisterns(rng, brainstem).items()}
        sylvian = self._sylvian(rng) & cavity
        self.csf_spaces = {
            "subarachnoid": subarachnoid, "sulci": sulci, "interhemispheric": interhemispheric,
            "ventricles": ventricles, "sylvian": sylvian, **cisterns,
        }
        for mask in self.csf_spaces.values():
            tissue[mask] = Tissue.CSF
        self.tissue = tissue
        self.parenchyma = cavity & np.isin(tissue, (Tissue.GREY_MATTER, Tissue.WHITE_MATTER))

        hu = np.empty(self.shape, dtype=np.float64)
        for t, (mean, spread) in _HU.items():
            hu[tissue == t] = mean + rng.uniform(-spread, spread)
        # bone: dense outer table, less dense towards the inside, thick skull base
        frac = np.clip(depth_out / np.maximum(thickness, 1.0), 0.0, 1.0)
        bone_hu = _BONE_HU[0] + (_BONE_HU[1] - _BONE_HU[0]) * frac + 80.0 * self.smooth(6.0)
        bone_hu = np.where(base, rng.uniform(900.0, 1300.0) + 100.0 * self.smooth(6.0), bone_hu)
        hu[bone] = np.clip(bone_hu[bone], _BONE_HU[0], _BONE_HU[1])
        # a little low-frequency texture inside soft tissues (not in air or bone)
        soft = ~np.isin(tissue, (Tissue.AIR, Tissue.BONE))
        hu[soft] += 1.5 * self.smooth(15.0)[soft]
        self.hu = hu

    def _ventricles(self, rng: np.random.Generator) -> np.ndarray:
        """Lateral ventricles (butterfly-shaped in axial slices), third and fourth ventricle."""
        z, y, x = self.z, self.y, self.x
        size = rng.uniform(0.8, 1.3)  # ventricular size varies a lot between people
        out = np.zeros(self.shape, dtype=bool)
        for side in (-1.0, 1.0):
            # bodies: run front to back, diverging towards the frontal horns
            xs = side * (7.0 + 0.15 * np.clip(-y, 0, None) + 0.1 * np.clip(y, 0, None))
            body = ((z - 12.0 - 0.1 * y) / (8.0 * size)) ** 2 + ((x - xs) / (6.0 * size)) ** 2 \
                + (y / 36.0) ** 2 < 1.0
            # occipital horns curve down and out behind the thalami
            occipital = _ellipsoid(z, y, x, (4.0, 36.0, side * 17.0), (8.0 * size, 13.0, 5.0 * size))
            temporal = _ellipsoid(z, y, x, (-18.0, 2.0, side * 28.0), (4.0, 14.0, 2.5 * size))
            out |= body | occipital | temporal
        out |= _ellipsoid(z, y, x, (-4.0, 0.0, 0.0), (8.0, 11.0, 1.8 * size))  # third ventricle
        out |= _ellipsoid(z, y, x, (-42.0, 22.0, 0.0), (6.0, 3.5, 5.0))  # fourth ventricle
        return out

    def _cisterns(self, rng: np.random.Generator, brainstem: np.ndarray) -> dict[str, np.ndarray]:
        """The basal cisterns: the CSF spaces around the brainstem at the skull base."""
        z, y, x = self.z, self.y, self.x
        width = rng.uniform(2.5, 4.5)
        stem_dist = ndimage.distance_transform_edt(~brainstem, sampling=self.spacing)
        around = (stem_dist > 0) & (stem_dist < width)
        return {
            # in front of the pons
            "prepontine": around & (z < -26.0) & (y < 10.0 + 0.25 * (z + 20.0)),
            # wrapping around the midbrain
            "ambient": around & (z >= -26.0) & (z < -12.0),
            # above the sella: a star-shaped space in front of the midbrain
            "suprasellar": _ellipsoid(z, y, x, (-18.0, -10.0, 0.0), (5.0, 10.0, 12.0))
            & (np.abs(np.abs(x) - 0.35 * np.abs(y + 10.0)) < 7.0),
            "quadrigeminal": _ellipsoid(z, y, x, (-10.0, 26.0, 0.0), (5.0, 6.0, 9.0)),
        }

    def _sylvian(self, rng: np.random.Generator) -> np.ndarray:
        """Sylvian fissures: thin clefts running from the suprasellar cistern out to the cortex."""
        z, y, x = self.z, self.y, self.x
        out = np.zeros(self.shape, dtype=bool)
        for side in (-1.0, 1.0):
            angle = np.deg2rad(rng.uniform(18.0, 28.0))  # fissure runs out and forwards
            # signed distance from a vertical plane through the cistern's lateral edge
            d = (side * x - 10.0) * np.sin(angle) + (y + 12.0) * np.cos(angle)
            along = (side * x - 10.0) * np.cos(angle) - (y + 12.0) * np.sin(angle)
            out |= (np.abs(d) < 2.2) & (along > 0) & (along < 55.0) & (z > -24.0) & (z < 6.0 - 0.2 * along)
        return out


def _tbi_bleeds(rng: np.random.Generator, a: _Anatomy) -> np.ndarray:
    """An intraparenchymal haematoma, with a subdural and an epidural one in half of the cases each.

    Every case has the compact intraparenchymal blob: trained from scratch for a few hundred
    iterations (the demo's CPU budget), nnU-Net first learns blood where it is surrounded by brain,
    and the thin extra-axial collections against the skull come later.
    """
    kinds = ["iph"] + [k for k in ("sdh", "edh") if rng.random() < 0.5]
    blood = np.zeros(a.shape, dtype=bool)
    for kind in kinds:
        size = np.exp(rng.uniform(np.log(0.5), 0.0))  # log-uniform: some bleeds are small
        if kind == "iph":
            blood |= _intraparenchymal(rng, a, size)
        else:
            blood |= _extra_axial(rng, a, size, epidural=kind == "edh")
    if not blood.any():  # a bleed that fell outside a tiny volume: fall back to a larger blob
        blood = _intraparenchymal(rng, a, 1.0)
    return blood


def _intraparenchymal(rng: np.random.Generator, a: _Anatomy, size: float) -> np.ndarray:
    deep = a.parenchyma & (a.depth > 12.0) & (a.z > -25.0)
    candidates = np.argwhere(deep if deep.any() else a.parenchyma)
    if len(candidates) == 0:
        return np.zeros(a.shape, dtype=bool)
    c = candidates[rng.integers(len(candidates))]
    centre = np.array([a.z[tuple(c)], a.y[tuple(c)], a.x[tuple(c)]])
    radii = size * rng.uniform(14.0, 26.0) * rng.uniform(0.7, 1.3, size=3)
    r = np.sqrt(((a.z - centre[0]) / radii[0]) ** 2 + ((a.y - centre[1]) / radii[1]) ** 2
                + ((a.x - centre[2]) / radii[2]) ** 2)
    # irregular margin: the boundary radius is modulated by a smooth random field
    return a.cavity & (r < 1.0 + 0.25 * a.smooth(6.0)) & ~a.csf_spaces["ventricles"]


def _extra_axial(rng: np.random.Generator, a: _Anatomy, size: float, epidural: bool) -> np.ndarray:
    """Subdural (long thin crescent) or epidural (short thick biconvex lens) haematoma.

    Both hug the inner table; their thickness profile along the skull is what tells them apart:
    flat with tapering ends for a crescent, elliptic for a lens.
    """
    # a direction over the convexity: anywhere around, from slightly below to well above the ventricles
    az = rng.uniform(0, 2 * np.pi)
    el = rng.uniform(-0.1, 0.9)
    u = np.array([np.sin(el), np.cos(el) * np.sin(az), np.cos(el) * np.cos(az)])
    q = np.stack([a.z / 62.0, a.y / 84.0, a.x / 66.0])
    norm = np.linalg.norm(q, axis=0) + 1e-9
    theta = np.arccos(np.clip(np.einsum("i,i...->...", u, q) / norm, -1.0, 1.0))
    if epidural:
        theta_max = np.deg2rad(rng.uniform(22.0, 36.0))
        t0 = size * rng.uniform(14.0, 26.0)
        profile = np.sqrt(np.clip(1.0 - (theta / theta_max) ** 2, 0.0, None))
    else:
        theta_max = np.deg2rad(rng.uniform(35.0, 70.0))
        t0 = size * rng.uniform(7.0, 13.0)
        profile = np.clip(1.0 - (theta / theta_max) ** 4, 0.0, None)
    return a.cavity & (a.z > -35.0) & (a.depth < t0 * profile)


def _sah(rng: np.random.Generator, a: _Anatomy) -> np.ndarray:
    """Blood in parts of the basal cisterns, Sylvian fissures and sulci: it follows the CSF."""
    spaces = a.csf_spaces
    chosen = ["suprasellar"] + [k for k in ("ambient", "prepontine", "quadrigeminal", "sylvian",
                                             "interhemispheric") if rng.random() < 0.6]
    region = np.zeros(a.shape, dtype=bool)
    for k in chosen:
        region |= spaces[k]
    # sulcal blood near one or two cortical spots (aneurysm rupture spreads along nearby sulci)
    sulcal = spaces["sulci"] | spaces["subarachnoid"]
    for _ in range(rng.integers(1, 3)):
        candidates = np.argwhere(sulcal & (a.z > -20.0))
        if len(candidates) == 0:
            break
        c = candidates[rng.integers(len(candidates))]
        radius = rng.uniform(25.0, 45.0)
        d = np.sqrt((a.z - a.z[tuple(c)]) ** 2 + (a.y - a.y[tuple(c)]) ** 2 + (a.x - a.x[tuple(c)]) ** 2)
        region |= sulcal & (d < radius)
    # fill patchily: part of each space stays clear CSF
    fill = a.smooth(10.0) > rng.uniform(-1.5, -0.5)
    blood = region & fill
    if not blood.any():
        blood = region
    if not blood.any():  # tiny volumes can miss the chosen spaces; any cistern will do
        blood = spaces["suprasellar"] | spaces["ambient"] | spaces["sylvian"]
    return blood


def _ellipsoid(z, y, x, centre, radii) -> np.ndarray:
    return ((z - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2 \
        + ((x - centre[2]) / radii[2]) ** 2 < 1.0


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Rotation of (z, y, x) coordinates: yaw about z, pitch (tilt) about x, roll about y."""
    cz, sz = np.cos(yaw), np.sin(yaw)
    cx, sx = np.cos(pitch), np.sin(pitch)
    cy, sy = np.cos(roll), np.sin(roll)
    about_z = np.array([[1, 0, 0], [0, cz, -sz], [0, sz, cz]])
    about_x = np.array([[cx, -sx, 0], [sx, cx, 0], [0, 0, 1]])
    about_y = np.array([[cy, 0, -sy], [0, 1, 0], [sy, 0, cy]])
    return about_z @ about_x @ about_y


# --------------------------------------------------------------------------- nnU-Net raw datasets

def write_dataset(
    raw_folder: str | os.PathLike,
    dataset_id: int,
    task: Task,
    num_train: int,
    num_test: int,
    seed: int = 0,
    shape: tuple[int, int, int] = DEFAULT_SHAPE,
    spacing: tuple[float, float, float] = DEFAULT_SPACING,
) -> Path:
    """Write ``Dataset{id}_Synthetic{TBI|SAH}`` into ``raw_folder`` and return its path.

    Layout: imagesTr/labelsTr for training, imagesTs with the held-out cases and labelsTs with
    their reference labels (nnU-Net ignores labelsTs; the demo evaluates against it). The dataset
    is built in a temporary folder beside the destination and moved into place, so an interrupted
    run never leaves a half-written dataset for nnU-Net to pick up.
    """
    import SimpleITK as sitk
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    if not 1 <= dataset_id <= 999:
        raise ValueError(f"dataset_id must be in 1..999 (nnU-Net's DatasetNNN), got {dataset_id}")
    if num_train < 2 or num_test < 0:
        raise ValueError(f"need num_train >= 2 and num_test >= 0, got {num_train} and {num_test}")
    name = f"Dataset{dataset_id:03d}_Synthetic{task.upper()}"
    raw_folder = Path(raw_folder)
    final = raw_folder / name
    if final.exists():
        raise FileExistsError(f"{final} exists already; delete it to generate it again")
    existing = list(raw_folder.glob(f"Dataset{dataset_id:03d}_*")) if raw_folder.is_dir() else []
    if existing:
        raise FileExistsError(f"dataset id {dataset_id} is taken by {existing[0]}; choose another id")
    raw_folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=raw_folder))
    try:
        _write_cases(sitk, tmp, "Tr", task, range(num_train), seed, shape, spacing)
        if num_test:
            _write_cases(sitk, tmp, "Ts", task, range(num_train, num_train + num_test), seed, shape, spacing)
        label_name = "haemorrhage" if task == "tbi" else "subarachnoid haemorrhage"
        generate_dataset_json(
            str(tmp), channel_names={0: "CT"}, labels={"background": 0, label_name: 1},
            num_training_cases=num_train, file_ending=".nii.gz",
            dataset_name=name, license="synthetic data, no restrictions",
            description=f"nnunet-peft demo: synthetic head CT with {label_name} "
                        f"(seed {seed}, shape {tuple(shape)}, spacing {tuple(spacing)} mm)",
            converted_by="nnunet_peft.demo.synthetic",
        )
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def write_test_cases(
    dataset_folder: str | os.PathLike,
    task: Task,
    first_index: int,
    num_test: int,
    seed: int = 0,
    shape: tuple[int, int, int] = DEFAULT_SHAPE,
    spacing: tuple[float, float, float] = DEFAULT_SPACING,
) -> Path:
    """Add ``imagesTs``/``labelsTs`` with cases ``first_index ..`` to a dataset written without them.

    The cases are those ``write_dataset`` writes as its held-out cases when ``first_index`` is its
    ``num_train`` (each case is a function of seed, task and index), so a dataset written before
    held-out cases were wanted gets exactly the ones a new one has. ``labelsTs`` is moved into place
    last: its presence means both folders are complete.
    """
    import SimpleITK as sitk

    if first_index < 0 or num_test < 1:
        raise ValueError(f"need first_index >= 0 and num_test >= 1, got {first_index} and {num_test}")
    folder = Path(dataset_folder)
    if not (folder / "dataset.json").is_file():
        raise FileNotFoundError(f"{folder / 'dataset.json'} not found; write the dataset with write_dataset first")
    if (folder / "labelsTs").exists():
        raise FileExistsError(f"{folder / 'labelsTs'} exists already; delete imagesTs and labelsTs to write them again")
    tmp = Path(tempfile.mkdtemp(prefix=".test_cases.", dir=folder))
    try:
        _write_cases(sitk, tmp, "Ts", task, range(first_index, first_index + num_test), seed, shape, spacing)
        shutil.rmtree(folder / "imagesTs", ignore_errors=True)  # left by an interrupted earlier call
        (tmp / "imagesTs").rename(folder / "imagesTs")
        (tmp / "labelsTs").rename(folder / "labelsTs")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _write_cases(sitk, folder: Path, split: str, task: Task, indices, seed: int,
                 shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> None:
    (folder / f"images{split}").mkdir()
    (folder / f"labels{split}").mkdir()
    for i in indices:
        case = synthesize_case(case_rng(seed, task, i), task, shape, spacing)
        case_id = f"{task}_{i:03d}"
        _write_nifti(sitk, np.round(case.image).astype(np.int16), spacing,
                     folder / f"images{split}" / f"{case_id}_0000.nii.gz")
        _write_nifti(sitk, case.label, spacing, folder / f"labels{split}" / f"{case_id}.nii.gz")


def _write_nifti(sitk, array: np.ndarray, spacing: tuple[float, float, float], path: Path) -> None:
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(tuple(float(s) for s in spacing[::-1]))  # SimpleITK orders axes (x, y, z)
    sitk.WriteImage(img, str(path), useCompression=True)
