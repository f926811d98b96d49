"""The registration pipeline (monai_moe_reg.apps): grids, affine stage, multi-resolution instance optimisation,
transform files, atlas segmentation and atomic publishing, on small synthetic volumes."""

import json
import math
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from monai_moe_reg.apps.affine import affine_register
from monai_moe_reg.apps.deformable import compose, optimise_pyramid
from monai_moe_reg.apps.registration import Registrar
from monai_moe_reg.apps.spatial import Grid, resample_field, warp_through
from monai_moe_reg.data import synthetic_pair

ROOT = Path(__file__).resolve().parents[1]
SHMOAREG = ROOT / "bundles" / "shmoareg"


def _rotation(deg: float, shift) -> torch.Tensor:
    a = math.radians(deg)
    m = torch.eye(4, dtype=torch.float64)
    m[:2, :2] = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    m[:3, 3] = torch.tensor(shift, dtype=torch.float64)
    return m


def _scan(array, affine) -> MetaTensor:
    return MetaTensor(torch.as_tensor(array)[None].float(), affine=torch.as_tensor(affine, dtype=torch.float64))


@pytest.fixture(scope="module")
def blob():
    pair = synthetic_pair((48, 48, 48), max_disp=0.0, seed=3)
    return pair["fixed_image"][0], pair["fixed_label"][0]


def test_resample_field_between_a_level_and_the_full_grid_is_exact_for_linear_fields():
    full = Grid((12, 10, 8), torch.diag(torch.tensor([1.5, 1.0, 2.0, 1.0], dtype=torch.float64)))
    level = full.coarsen((2, 2, 2))
    idx = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in level.shape], indexing="ij"))
    ddf = (0.1 * idx + 0.3)[None]  # linear in level voxels
    back = resample_field(ddf, level, full)
    # the same physical displacement: level voxel steps are 2 full voxels
    probe = resample_field(back, full, level)
    assert torch.allclose(probe[..., 1:-1, 1:-1, 1:-1], ddf[..., 1:-1, 1:-1, 1:-1], atol=1e-4)


def test_affine_stage_recovers_a_20_degree_rotation_and_15_mm_shift(blob):
    image, _ = blob
    fixed_affine = torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0], dtype=torch.float64))
    fixed_affine[:3, 3] = -47.0  # centred
    truth = _rotation(20.0, (15.0, -6.0, 4.0))  # fixed world -> moving world
    grid = Grid((48, 48, 48), fixed_affine)
    # the moving scan: the fixed anatomy seen through the inverse transform, on the same grid
    moving = warp_through(image[None, None], torch.linalg.inv(fixed_affine) @ torch.linalg.inv(truth) @ fixed_affine,
                          grid.shape)
    found = affine_register(image[None, None], grid, moving, grid, torch.nn.MSELoss(), levels=(4, 2), steps=(150, 80),
                            lr=0.02)
    err = torch.linalg.inv(truth) @ found
    angle = math.degrees(math.acos(max(-1.0, min(1.0, (float(torch.trace(err[:3, :3])) - 1) / 2))))
    assert angle < 1.5, found
    centre = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    assert float((found @ centre - truth @ centre)[:3].norm()) < 1.5, found


def test_affine_starts_keep_the_best_initial_rotation(blob):
    """With ``starts``, each initial rotation gets a short fit on the coarsest level and the lowest loss is refined:
    a start at the true rotation (45 deg) is picked over none, and ends closer than the same schedule from none."""
    from monai_moe_reg.apps.affine import _rotation_matrix

    image, _ = blob
    fixed_affine = torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0], dtype=torch.float64))
    fixed_affine[:3, 3] = -47.0
    truth = torch.eye(4, dtype=torch.float64)
    truth[:3, :3] = _rotation_matrix((0.0, 0.0, 45.0))
    grid = Grid((48, 48, 48), fixed_affine)
    moving = warp_through(image[None, None], torch.linalg.inv(fixed_affine) @ torch.linalg.inv(truth) @ fixed_affine,
                          grid.shape)

    def angle_error(found):
        err = torch.linalg.inv(truth) @ found
        return math.degrees(math.acos(max(-1.0, min(1.0, (float(torch.trace(err[:3, :3])) - 1) / 2))))

    kw = dict(levels=(4, 2), steps=(60, 30), lr=0.02)
    single = angle_error(affine_register(image[None, None], grid, moving, grid, torch.nn.MSELoss(), **kw))
    multi = angle_error(affine_register(image[None, None], grid, moving, grid, torch.nn.MSELoss(),
                                        starts=[(0.0, 0.0, -45.0), (0.0, 0.0, 45.0)], start_steps=20, **kw))
    assert multi < 1.0 and single > multi + 1.0, (single, multi)  # measured: 2.8 deg from none, 0.0 from starts
    assert torch.allclose(_rotation_matrix((0.0, 0.0, 90.0))[:2, :2], torch.tensor([[0.0, -1.0], [1.0, 0.0]],
                          dtype=torch.float64), atol=1e-12)


def test_pyramid_instance_optimisation_recovers_a_deformation_without_folding():
    pair = synthetic_pair((40, 40, 40), max_disp=4.0, seed=5)
    grid = Grid((40, 40, 40), torch.eye(4, dtype=torch.float64))
    fixed, moving = pair["fixed_image"][None].float(), pair["moving_image"][None].float()
    before = torch.nn.functional.mse_loss(moving, fixed)
    for diffeomorphic in (False, True):
        w, w_grid, info = optimise_pyramid(fixed, grid, moving, grid, torch.eye(4, dtype=torch.float64),
                                           torch.nn.MSELoss(), lambda_reg=0.05, levels=(2, 1), steps=(60, 40), lr=0.3,
                                           diffeomorphic=diffeomorphic, integration_steps=5)
        ddf = resample_field(w, w_grid, grid)
        after = torch.nn.functional.mse_loss(warp_through(moving, torch.eye(4), grid.shape, ddf), fixed)
        assert after < 0.5 * before, (diffeomorphic, before, after)
        from monai_moe_reg.metrics import nonpositive_jacobian_percent

        assert float(nonpositive_jacobian_percent(ddf)) < 0.05
        assert len(info["steps"]) == 2


def test_total_field_regularisation_smooths_a_rough_initial_field_and_residual_regularisation_keeps_it():
    """``regularise="total"`` penalises the composed field, so the roughness a network's field brings is removed;
    ``"residual"`` only penalises the change, so a rough initial field stays rough. With no image term (a zero
    similarity) only the regulariser acts. An unknown mode is refused."""
    from monai.losses import DiffusionLoss

    class NoSimilarity(torch.nn.Module):
        def forward(self, warped, fixed):
            return 0.0 * warped.sum()

    grid = Grid((24, 24, 24), torch.eye(4, dtype=torch.float64))
    image = synthetic_pair((24, 24, 24), max_disp=0.0, seed=1)["fixed_image"][None].float()
    rough = 0.8 * torch.randn(1, 3, 24, 24, 24, generator=torch.Generator().manual_seed(0))
    roughness = {}
    for mode in ("residual", "total"):
        w, w_grid, _ = optimise_pyramid(image, grid, image, grid, torch.eye(4, dtype=torch.float64),
                                        NoSimilarity(), lambda_reg=1.0, levels=(1,), steps=40, lr=0.3,
                                        initial=(rough, grid), regularise=mode, patience=100)
        roughness[mode] = float(DiffusionLoss()(compose(resample_field(w, w_grid, grid), rough)))
    start = float(DiffusionLoss()(rough))
    assert roughness["total"] < 0.5 * start, (start, roughness)
    assert roughness["residual"] == pytest.approx(start, rel=1e-3), (start, roughness)
    with pytest.raises(ValueError, match="regularise must be one of"):
        optimise_pyramid(image, grid, image, grid, torch.eye(4, dtype=torch.float64), torch.nn.MSELoss(),
                         levels=(1,), steps=1, regularise="both")


def _files(tmp_path, pair, moving_affine=None):
    fixed_affine = np.diag([2.0, 2.0, 2.0, 1.0])
    out = {}
    for key in ("fixed_image", "fixed_label", "moving_image", "moving_label"):
        arr = pair[key][0].numpy()
        arr = arr.astype(np.int32) if "label" in key else arr.astype(np.float32)
        aff = moving_affine if key.startswith("moving") and moving_affine is not None else fixed_affine
        out[key] = str(tmp_path / f"{key}.nii.gz")
        nib.save(nib.Nifti1Image(arr, aff), out[key])
    return out


@pytest.fixture(scope="module")
def registrar():
    return Registrar.from_bundle(SHMOAREG, network="off",
                                 overrides={"instance_optimisation": {"steps": [30, 20]}, "affine": {"steps": [40, 20]}})


def test_atlas_segmentation_with_a_moving_label_alone(registrar, tmp_path):
    pair = synthetic_pair((32, 32, 32), max_disp=3.0, seed=2)
    files = _files(tmp_path, pair)
    result = registrar(files["fixed_image"], files["moving_image"], moving_label=files["moving_label"])
    assert result.warped_label is not None and result.warped_label.shape == (1, 32, 32, 32)
    assert "dice" not in result.metrics and "sdlogj" in result.metrics
    folder = Registrar.write(result, tmp_path / "out" / "atlas")
    assert (folder / "warped_label.nii.gz").is_file() and (folder / "transform.h5").is_file()
    # only what was asked for beyond the warped scans, the one transform file and the metrics
    assert sorted(p.name for p in folder.iterdir()) == [".monai-moe-reg.json", "metrics.csv", "metrics.json",
                                                        "transform.h5", "warped_image.nii.gz", "warped_label.nii.gz"]
    with pytest.raises(ValueError, match=r"unknown extra output\(s\) \['jacobians'\]: choose from ddf"):
        Registrar.write(result, tmp_path / "out" / "typo", extras="ddf,jacobians")
    assert not (tmp_path / "out" / "typo").exists()
    with pytest.raises(ValueError, match="moving label"):
        registrar(files["fixed_image"], files["moving_image"], fixed_label=files["fixed_label"])


def test_label_ids_above_int16_survive(registrar, tmp_path):
    pair = synthetic_pair((32, 32, 32), max_disp=2.0, seed=4)
    pair["moving_label"] = pair["moving_label"] * 20000  # ids 20000, 40000, ...
    files = _files(tmp_path, pair)
    result = registrar(files["fixed_image"], files["moving_image"], moving_label=files["moving_label"], affine="off")
    folder = Registrar.write(result, tmp_path / "out" / "big_ids")
    ids = set(np.unique(np.asarray(nib.load(str(folder / "warped_label.nii.gz")).dataobj)).tolist())
    assert ids <= set(np.unique(pair["moving_label"].numpy()).tolist()) and max(ids) >= 40000


def test_transform_h5_applied_by_itk_to_the_original_moving_file_reproduces_our_warp(registrar, tmp_path):
    """Moving stored with another size, spacing and orientation than the fixed scan, and shifted + rotated."""
    import itk

    pair = synthetic_pair((32, 32, 32), max_disp=3.0, seed=8)
    moving_affine = np.array([[0.0, -2.5, 0.0, 40.0], [1.6, 0.0, 0.0, -3.0], [0.0, 0.0, 2.0, 5.0], [0, 0, 0, 1.0]])
    files = _files(tmp_path, pair, moving_affine)
    result = registrar(files["fixed_image"], files["moving_image"], files["fixed_label"], files["moving_label"])
    folder = Registrar.write(result, tmp_path / "out" / "grids", extras="ddf_itk")
    transform = itk.transformread(str(folder / "transform.h5"))[0]
    fixed = itk.imread(files["fixed_image"], itk.F)
    warped = itk.resample_image_filter(itk.imread(files["moving_image"], itk.F), transform=transform,
                                       use_reference_image=True, reference_image=fixed)
    theirs = np.transpose(itk.array_from_image(warped), (2, 1, 0)).ravel()
    ours = nib.load(str(folder / "warped_image.nii.gz")).get_fdata().ravel()
    assert np.corrcoef(ours, theirs)[0, 1] > 0.99
    # and the total displacement field written for ITK/ANTs gives the same image
    field = itk.imread(str(folder / "ddf_itk.nii.gz"))
    warped2 = itk.warp_image_filter(itk.imread(files["moving_image"], itk.F), displacement_field=field,
                                    output_parameters_from_image=fixed)
    theirs2 = np.transpose(itk.array_from_image(warped2), (2, 1, 0)).ravel()
    assert np.corrcoef(ours, theirs2)[0, 1] > 0.99


def test_publishing_is_atomic_and_a_failure_leaves_nothing(registrar, tmp_path, monkeypatch):
    pair = synthetic_pair((32, 32, 32), max_disp=2.0, seed=6)
    files = _files(tmp_path, pair)
    result = registrar(files["fixed_image"], files["moving_image"], affine="only")
    out = tmp_path / "pub"
    first = Registrar.write(result, out / "pair", extra_files={"run.txt": "1"})
    Registrar.write(result, out / "pair", extra_files={"run.txt": "2"})
    assert (first / "run.txt").read_text() == "2" and sorted(p.name for p in out.iterdir()) == ["pair"]

    import monai_moe_reg.data.displacement_io as dio

    monkeypatch.setattr(dio, "write_itk_transform", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        Registrar.write(result, out / "other")
    assert sorted(p.name for p in out.iterdir()) == ["pair"]  # no staging folder, no half-written pair
    json.loads((first / "metrics.json").read_text())


def test_publishing_never_replaces_files_it_did_not_write_and_cleans_up_after_killed_runs(registrar, tmp_path):
    """A result folder holding the user's own files is never replaced (the error names them); our own earlier
    result is; staging folders of dead runs are removed and a destination a kill left moved aside is put back;
    long names fit and the folder gets the usual permissions."""
    import os

    from monai_moe_reg.data.staging import MARKER

    pair = synthetic_pair((32, 32, 32), max_disp=2.0, seed=6)
    files = _files(tmp_path, pair)
    result = registrar(files["fixed_image"], files["moving_image"], affine="only")
    out = tmp_path / "res"
    (out / "pair").mkdir(parents=True)
    (out / "pair" / "moving.nii.gz").write_bytes(b"the user's scan")
    with pytest.raises(FileExistsError, match=r"did not write \(moving.nii.gz\)"):
        Registrar.write(result, out / "pair")
    assert (out / "pair" / "moving.nii.gz").read_bytes() == b"the user's scan"
    assert sorted(p.name for p in out.iterdir()) == ["pair"]

    first = Registrar.write(result, out / "mine")
    assert json.loads((first / MARKER).read_text())["files"]
    assert oct(first.stat().st_mode & 0o777) == oct(0o777 & ~_umask())
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / f".mine.{dead.pid}.abc.part").mkdir()  # a killed run's staging folder
    Registrar.write(result, out / "mine")  # our own earlier result: replaced
    assert sorted(p.name for p in out.iterdir()) == ["mine", "pair"]
    first.replace(out / f".mine.{dead.pid}.xyz.old")  # killed between the two renames of a replacement
    Registrar.write(result, out / "other")
    assert (out / "mine" / "warped_image.nii.gz").is_file()
    long = Registrar.write(result, out / ("n" * 250))
    assert long.is_dir() and not [p for p in out.iterdir() if p.name.endswith((".part", ".old"))]


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_multichannel_binary_label_files_become_one_label_map(tmp_path):
    from monai_moe_reg.apps.registration import load_scan

    arr = np.zeros((8, 8, 8, 2), np.uint8)
    arr[2:4, 2:4, 2:4, 0] = 1
    arr[5:7, 5:7, 5:7, 1] = 1
    path = tmp_path / "lab.nii.gz"
    nib.save(nib.Nifti1Image(arr, np.diag([2.0, 2.0, 2.0, 1.0])), str(path))
    lab = load_scan(path, "label", label=True)
    assert lab.shape == (1, 8, 8, 8) and sorted(lab.unique().tolist()) == [0, 1, 2]
    assert np.allclose(np.asarray(lab.affine), np.diag([2.0, 2.0, 2.0, 1.0]))
    neg = tmp_path / "neg.nii.gz"
    nib.save(nib.Nifti1Image(-arr[..., 0].astype(np.int16), np.eye(4)), str(neg))
    with pytest.raises(ValueError, match="negative"):
        load_scan(neg, "label", label=True)


def test_non_finite_network_output_is_an_error_not_a_silent_nan_field(tmp_path):
    class Broken(torch.nn.Module):
        def forward(self, x):
            return torch.full((x.shape[0], 3, *x.shape[2:]), float("nan"))

    base = Registrar.from_bundle(SHMOAREG, network="off")
    registrar = Registrar(Broken(), base.config)
    pair = synthetic_pair((32, 32, 32), max_disp=2.0, seed=1)
    files = _files(tmp_path, pair)
    with pytest.raises(ValueError, match="non-finite displacements"):
        registrar(files["fixed_image"], files["moving_image"])


def test_an_unknown_setting_in_the_registration_section_is_named():
    base = Registrar.from_bundle(SHMOAREG, network="off").config
    with pytest.raises(ValueError, match=r"registration section has unknown settings \['network_smothing'\]"):
        Registrar(None, {**base, "network_smothing": 1.0})
    for key, bad in (("network_smoothing", "1"), ("network_smoothing", -1.0), ("network_spacing", 0.0),
                     ("network_spacing", float("inf"))):
        with pytest.raises(ValueError, match=f"registration::{key} must be"):
            Registrar(None, {**base, key: bad})
    with pytest.raises(ValueError, match=r"unknown settings \['lamda_reg'\]"):
        reg = Registrar.from_bundle(SHMOAREG, network="off", overrides={"instance_optimisation": {"lamda_reg": 2.0}})
        reg._stage("instance_optimisation")


def test_the_schedule_from_a_network_field_comes_from_network_instance_optimisation_and_user_overrides_win():
    """SHMoAReg's inference.json refines a network's field with its own schedule (total-field regularisation, fewer
    steps); from the identity the base section applies; an explicit override applies to both."""
    reg = Registrar.from_bundle(SHMOAREG, network="off")
    base, from_net = reg._stage("instance_optimisation"), reg._stage("instance_optimisation", from_network=True)
    assert base["steps"] == [100, 60] and base.get("regularise", "residual") == "residual"
    assert from_net["steps"] == [20, 40] and from_net["regularise"] == "total"
    assert from_net["similarity"] is base["similarity"] and from_net["lambda_reg"] == base["lambda_reg"]
    reg = Registrar.from_bundle(SHMOAREG, network="off", overrides={"instance_optimisation": {"steps": 7}})
    assert reg._stage("instance_optimisation")["steps"] == 7
    assert reg._stage("instance_optimisation", from_network=True)["steps"] == 7
    reg.config["network_instance_optimisation"] = {"step": 3}
    with pytest.raises(ValueError, match=r"network_instance_optimisation section has unknown settings \['step'\]"):
        reg._stage("instance_optimisation", from_network=True)


def test_network_smoothing_smooths_the_network_field_before_instance_optimisation():
    """The registration section's network_smoothing (voxels of the network grid) Gaussian-smooths the network DDF."""
    from monai_moe_reg.apps.spatial import Grid

    class Noisy(torch.nn.Module):
        def forward(self, x):
            return torch.randn(x.shape[0], 3, *x.shape[2:], generator=torch.Generator().manual_seed(0))

    grid = Grid((16, 16, 16), torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0], dtype=torch.float64)))
    img = torch.rand(1, 1, 16, 16, 16)
    rough = {}
    for sigma in (0.0, 1.0):
        sim = {"similarity": torch.nn.MSELoss()}
        reg = Registrar(Noisy(), {"network_spacing": 2.0, "network_smoothing": sigma, "affine": dict(sim),
                                  "instance_optimisation": dict(sim)})
        ddf, _ = reg._network_ddf(img, grid, img, grid, torch.eye(4, dtype=torch.float64))
        rough[sigma] = float((ddf[..., 1:] - ddf[..., :-1]).abs().mean())
    assert rough[1.0] < 0.3 * rough[0.0]


def test_the_network_sees_its_pair_in_ras_whatever_the_orientation_of_the_scans():
    """The bundles train on pairs reoriented to RAS (pair_transforms); register presents the network its pair the
    same way (flips and permutations only: the values of nibabel's closest canonical image), and the field it returns
    maps back to the scan's own axes."""

    class Probe(torch.nn.Module):
        def forward(self, x):
            self.seen = x.clone()
            ddf = torch.zeros(x.shape[0], 3, *x.shape[2:])
            ddf[:, 0] = 1.0  # one voxel towards R (axis 0 of a RAS grid)
            return ddf

    psr = torch.tensor([[0, 0, 2, 5], [-2, 0, 0, 7], [0, 2, 0, -3], [0, 0, 0, 1]], dtype=torch.float64)
    grid = Grid((12, 10, 8), psr)
    img = torch.rand(1, 1, 12, 10, 8)
    probe = Probe()
    sim = {"similarity": torch.nn.MSELoss()}
    reg = Registrar(probe, {"network_spacing": 2.0, "network_smoothing": 0.0, "affine": dict(sim),
                            "instance_optimisation": dict(sim)})
    ddf, net_grid = reg._network_ddf(img, grid, img, grid, torch.eye(4, dtype=torch.float64))
    canonical = nib.as_closest_canonical(nib.Nifti1Image(img[0, 0].numpy(), psr.numpy()))
    assert nib.aff2axcodes(net_grid.affine.numpy()) == ("R", "A", "S")
    assert torch.allclose(net_grid.affine, torch.as_tensor(canonical.affine))
    assert torch.equal(probe.seen[0, 1], torch.as_tensor(np.ascontiguousarray(canonical.dataobj)))
    assert torch.allclose(probe.seen[0, 0], probe.seen[0, 1], atol=1e-6)  # the moving scan on the same grid
    back = resample_field(ddf, net_grid, grid)  # 2 mm towards R = +1 voxel along the PSR grid's third axis
    assert torch.allclose(back[:, 2], torch.ones(1)) and torch.allclose(back[:, :2], torch.zeros(1), atol=1e-6)


def test_bundle_registration_can_leave_out_the_network_and_scale_its_own_way():
    """SHMoAReg's registration section says ``use_network: false`` and ``intensity: "mr"`` (chosen on the tuning
    pairs): ``network="auto"`` then registers without the network, ``"on"`` or a checkpoint still uses it, both scans
    get the section's scaling, and a non-boolean ``use_network`` is refused."""
    from monai_moe_reg.bundles import bundle_config

    auto = Registrar.from_bundle(SHMOAREG)
    assert auto.network is None
    assert auto.moving_intensity == auto.fixed_intensity == "mr"
    assert "use_network" not in auto.config and "intensity" not in auto.config
    assert Registrar.from_bundle(SHMOAREG, network="on").network is not None
    assert bundle_config(SHMOAREG, "inference.json")["moving_intensity"] == "minmax"  # the network's own scaling
    with pytest.raises(ValueError, match="use_network must be true or false"):
        Registrar.from_bundle(SHMOAREG, overrides={"use_network": "no"})
