"""Real scans for bench/accuracy.py: the data folder's brains on one grid, their pairs, and the prostate MR->US split.

Everything is read from the folder given on the command line (``../shared/data`` here, see its README) and kept in
memory; nothing is copied into the project.

Brains (``brain/subject_a`` with FreeSurfer aseg, ``brain3/image_{A,B}`` with 3 classes) are put on one grid: a
192 mm cube at 2 mm (96^3). ``image_A`` and ``image_B`` already share a space (they are centre-padded, untouched);
``subject_a`` is stored in another axis order under an identity affine, so its axis permutation/flip is found by
normalised cross-correlation with ``image_A`` (printed) and its brain centroid is moved onto ``image_A``'s.

Prostate pairs (DeepReg's paired MR->TRUS data) share one field of view but not one voxel grid (moving 64x64x60,
fixed about 44x59x41, both stored with the same 0.4 mm affine), so both are resized to one size, as DeepReg does.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

from monai_moe_reg.data.synthetic import random_smooth_ddf, warp_image

BRAIN_MM = 192  # side of the common brain cube, mm


def _require(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(
            f"'{path}' is missing: pass the data folder described in ../shared/data/README.md (brain/, brain3/, "
            "prostate/paired/train/)."
        )
    return path


def _read(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(_require(path))).dataobj)


def _label_on_image_grid(label_path: Path, image_path: Path) -> np.ndarray:
    """The label map resampled (nearest) onto its image's voxel grid through both headers. ``brain3/image_A_seg`` is
    stored with spacing (0.981, 0.969, 1) mm and origin (3, 6, 0) mm while its image is 1 mm at the origin; using the
    voxels as they are would misplace the labels by up to 6 mm."""
    from scipy.ndimage import affine_transform

    lab, img = nib.load(str(_require(label_path))), nib.load(str(_require(image_path)))
    data = np.asarray(lab.dataobj).astype(np.int16)
    la, ia = np.asarray(lab.affine), np.asarray(img.affine)
    if np.allclose(la, ia, atol=1e-4) and data.shape == img.shape:
        return data
    vox = np.linalg.solve(la, ia)  # image voxel -> label voxel
    return affine_transform(data, vox[:3, :3], vox[:3, 3], output_shape=img.shape, order=0, mode="constant")


def _ncc(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum() + 1e-12))


def _centroid(image: np.ndarray) -> np.ndarray:
    return np.argwhere(image > 0.1 * image.max()).mean(0)


def _place(volume: np.ndarray, centre: np.ndarray, size: int, target: np.ndarray | None = None) -> np.ndarray:
    """Crop/pad ``volume`` into a ``size``^3 cube so that voxel ``centre`` lands on ``target`` (default: the cube's
    centre)."""
    target = np.full(3, size / 2.0) if target is None else target
    out = np.zeros((size,) * 3, dtype=volume.dtype)
    shift = np.round(target - centre).astype(int)
    src = [slice(max(0, -s), min(n, size - s)) for s, n in zip(shift, volume.shape)]
    dst = [slice(max(0, s), max(0, s) + (sl.stop - sl.start)) for s, sl in zip(shift, src)]
    out[tuple(dst)] = volume[tuple(src)]
    return out


def _orientations():
    for perm in itertools.permutations(range(3)):
        for flips in itertools.product((False, True), repeat=3):
            yield perm, flips


def _reorient(volume: np.ndarray, perm, flips) -> np.ndarray:
    out = np.transpose(volume, perm)
    for axis, flip in enumerate(flips):
        if flip:
            out = np.flip(out, axis)
    return np.ascontiguousarray(out)


def _coarse(volume: np.ndarray, size: int = 48) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))[None, None]
    return F.interpolate(t, size=(size,) * 3, mode="area")[0, 0].numpy()


def _to_grid(image: np.ndarray, label: np.ndarray, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """1 mm cube -> ``size``^3 cube (area-averaged image, nearest label), both ``(1, size, size, size)``."""
    img = torch.from_numpy(_coarse(image, size))[None]
    lab = torch.from_numpy(np.ascontiguousarray(label, dtype=np.float32))[None, None]
    lab = F.interpolate(lab, size=(size,) * 3, mode="nearest")[0].long()
    return img.clamp(0, 1), lab


def load_brains(root: str | Path, size: int = 96, log=print) -> dict[str, dict]:
    """The three brains on a ``BRAIN_MM`` mm cube of ``size``^3 voxels.

    Returns ``{name: {"image": (1, S, S, S) float in [0, 1], "label": (1, S, S, S) int64, "labels": [ids used for
    Dice: the 30 of eval_labels.json for subject_a, 1 and 2 for brain3]}}``; the spacing in mm is ``BRAIN_MM / size``.
    """
    root = Path(root)
    a_img = _read(root / "brain3" / "image_A.nii.gz").astype(np.float32)
    brains = {}
    a_centre = np.array(a_img.shape) / 2.0  # image_A/B: one space, centre-padded
    for name in ("A", "B"):
        img = _read(root / "brain3" / f"image_{name}.nii.gz").astype(np.float32)
        seg = _label_on_image_grid(root / "brain3" / f"image_{name}_seg.nii.gz", root / "brain3" / f"image_{name}.nii.gz")
        img = (img - img.min()) / max(float(img.max() - img.min()), 1e-6)
        image, label = _to_grid(_place(img, a_centre, BRAIN_MM), _place(seg, a_centre, BRAIN_MM), size)
        brains[f"brain3_{name}"] = {"image": image, "label": label, "labels": [1, 2]}

    s_img = _read(root / "brain" / "subject_a_t1.nii.gz").astype(np.float32)
    s_seg = _read(root / "brain" / "subject_a_seg.nii.gz").astype(np.int16)
    eval_labels = json.loads(_require(root / "brain" / "eval_labels.json").read_text())["labels"]
    ref = _coarse(_place(a_img, a_centre, BRAIN_MM))
    a_in_cube = _centroid(_place(a_img, a_centre, BRAIN_MM))
    best = None
    for perm, flips in _orientations():  # 48 candidates at 4 mm: about a second
        vol = _reorient(s_img, perm, flips)
        score = _ncc(_coarse(_place(vol, _centroid(vol), BRAIN_MM, a_in_cube)), ref)
        if best is None or score > best[0]:
            best = (score, perm, flips)
    score, perm, flips = best
    log(f"subject_a reoriented onto brain3 axes: permutation {perm}, flips {flips} (NCC with image_A {score:.3f})")
    s_img, s_seg = _reorient(s_img, perm, flips), _reorient(s_seg, perm, flips)
    centre = _centroid(s_img)
    image, label = _to_grid(_place(s_img, centre, BRAIN_MM, a_in_cube), _place(s_seg, centre, BRAIN_MM, a_in_cube), size)
    brains["subject_a"] = {"image": image, "label": label, "labels": [int(v) for v in eval_labels]}
    return brains


def deformed_pair(subject: dict, max_disp: float, seed: int, control: int = 4) -> dict:
    """Moving = the subject, fixed = the subject warped by a random smooth DDF (``seed``), labels warped nearest."""
    shape = subject["image"].shape[1:]
    ddf = random_smooth_ddf(shape, max_disp=max_disp, control=control, seed=seed)
    return {
        "moving_image": subject["image"],
        "moving_label": subject["label"],
        "fixed_image": warp_image(subject["image"], ddf),
        "fixed_label": warp_image(subject["label"], ddf, mode="nearest"),
        "labels": subject["labels"],
    }


def brain_eval_pairs(brains: dict, deformed_per_subject: int = 1, max_disp: float = 4.0, seed: int = 10_000) -> list[dict]:
    """Real inter-subject pairs with one label set (``brain3_A`` <-> ``brain3_B``, 3 classes) and, per subject,
    ``deformed_per_subject`` held-out deformed pairs (seeds ``seed + i``, never used by the training sampler)."""
    pairs = []
    for mov, fix in (("brain3_A", "brain3_B"), ("brain3_B", "brain3_A")):
        pairs.append({
            "name": f"{mov}->{fix}", "kind": "real",
            "moving_image": brains[mov]["image"], "moving_label": brains[mov]["label"],
            "fixed_image": brains[fix]["image"], "fixed_label": brains[fix]["label"], "labels": brains[fix]["labels"],
        })
    k = 0
    for name, subject in brains.items():
        for _ in range(deformed_per_subject):
            pair = deformed_pair(subject, max_disp, seed + k)
            pair.update(name=f"{name}->deformed#{seed + k}", kind="deformed")
            pairs.append(pair)
            k += 1
    return pairs


class BrainTrainSampler:
    """Endless unsupervised training pairs at ``size``^3: two brains drawn at random (the same one half of the time,
    re-paired otherwise), each warped by its own random smooth DDF, with a random gamma. Seeds come from one
    ``numpy`` generator started at ``seed``, below the held-out evaluation seeds."""

    def __init__(self, brains: dict, size: int, max_disp: float = 3.0, seed: int = 0) -> None:
        self.images = [F.interpolate(b["image"][None], size=(size,) * 3, mode="area")[0] for b in brains.values()]
        self.size, self.max_disp = size, max_disp
        self.rng = np.random.default_rng(seed)

    def _one(self, index: int) -> torch.Tensor:
        ddf = random_smooth_ddf((self.size,) * 3, max_disp=self.max_disp, seed=int(self.rng.integers(0, 5_000)))
        gamma = float(np.exp(self.rng.uniform(-0.2, 0.2)))
        return warp_image(self.images[index], ddf).clamp(0, 1) ** gamma

    def __call__(self) -> dict:
        i = int(self.rng.integers(len(self.images)))
        j = i if self.rng.random() < 0.5 else int(self.rng.integers(len(self.images)))
        return {"moving_image": self._one(i)[None], "fixed_image": self._one(j)[None]}


def _prostate_case(folder: Path, case: str, kind: str, size) -> tuple[torch.Tensor, torch.Tensor]:
    img = _read(folder / f"{kind}_images" / case).astype(np.float32)
    lab = _read(folder / f"{kind}_labels" / case).astype(np.float32)
    if lab.ndim == 3:
        lab = lab[..., None]
    img = (img - img.min()) / max(float(img.max() - img.min()), 1e-6)
    img_t = F.interpolate(torch.from_numpy(img)[None, None], size=size, mode="trilinear", align_corners=False)[0]
    lab_t = torch.from_numpy(np.moveaxis(lab, -1, 0).copy())[None]
    lab_t = (F.interpolate(lab_t, size=size, mode="trilinear", align_corners=False)[0] > 0.5).float()
    return img_t, lab_t


def load_prostate(root: str | Path, size=(48, 64, 48), num_test: int = 7, seed: int = 0, gland_only: bool = True) -> dict:
    """The 25 paired MR->TRUS cases resized to ``size`` (images min-max scaled; 1 to 3 binary label channels per case:
    the gland, then landmarks; moving and fixed have the same channels). With ``gland_only`` only the gland channel is
    kept: the landmarks are 20-135 voxels at 48x64x48, too small for a Dice signal (DeepReg scores them by target
    registration error instead). Split once
    with ``seed`` into ``train`` and ``test`` (``num_test`` cases). Returns ``{"train": [...], "test": [...],
    "spacing": mm per voxel of the resized fixed grid}``."""
    folder = _require(Path(root) / "prostate" / "paired" / "train")
    cases = sorted(p.name for p in _require(folder / "fixed_images").iterdir() if p.name.endswith(".nii.gz"))
    if len(cases) <= num_test:
        raise ValueError(f"need more than {num_test} prostate pairs in '{folder}', found {len(cases)}.")
    order = np.random.default_rng(seed).permutation(len(cases))
    fixed_shape = nib.load(str(folder / "fixed_images" / cases[0])).shape
    spacing = [0.4 * n / s for n, s in zip(fixed_shape, size)]
    pairs = []
    for case in cases:
        mov, mov_lab = _prostate_case(folder, case, "moving", size)
        fix, fix_lab = _prostate_case(folder, case, "fixed", size)
        if gland_only:
            mov_lab, fix_lab = mov_lab[:1], fix_lab[:1]
        pairs.append({"name": case.split(".")[0], "kind": "prostate", "moving_image": mov, "moving_label": mov_lab,
                      "fixed_image": fix, "fixed_label": fix_lab, "labels": [1]})
    test = sorted(order[:num_test].tolist())
    return {"train": [pairs[i] for i in range(len(pairs)) if i not in test], "test": [pairs[i] for i in test],
            "spacing": spacing}


class ProstateTrainSampler:
    """Endless semi-supervised training pairs from the training split: one of the pair's label channels drawn at
    random (as DeepReg does; only the gland with ``load_prostate(gland_only=True)``), and each side (image and that
    label together) warped by its own random smooth DDF (``max_disp`` voxels), seeded. Labels are ``(1, 1, *S)``
    binary maps (use ``LLMMorphLoss(num_classes=2)``)."""

    def __init__(self, pairs: list[dict], max_disp: float = 2.0, seed: int = 0) -> None:
        self.pairs, self.max_disp = pairs, max_disp
        self.rng = np.random.default_rng(seed)

    def _side(self, image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ddf = random_smooth_ddf(image.shape[1:], max_disp=self.max_disp, seed=int(self.rng.integers(0, 5_000)))
        return warp_image(image, ddf), (warp_image(label, ddf) > 0.5).float()

    def __call__(self) -> dict:
        pair = self.pairs[int(self.rng.integers(len(self.pairs)))]
        c = int(self.rng.integers(pair["fixed_label"].shape[0]))
        mov, mov_lab = self._side(pair["moving_image"], pair["moving_label"][c : c + 1])
        fix, fix_lab = self._side(pair["fixed_image"], pair["fixed_label"][c : c + 1])
        return {"moving_image": mov[None], "fixed_image": fix[None], "moving_label": mov_lab[None],
                "fixed_label": fix_lab[None]}
