import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from monai_moe_reg.data import (
    ensure_datalist,
    expand_subject_pairs,
    load_pairs,
    pair_transforms,
    synthetic_pair,
)


def test_expand_subject_pairs():
    subjects = [{"image": f"s{i}.nii.gz", "label": f"l{i}.nii.gz"} for i in range(4)]
    pairs = expand_subject_pairs(subjects, "all")
    assert len(pairs) == 4 * 3  # the papers' N x (N - 1) ordered pairs
    assert all(p["moving_image"] != p["fixed_image"] for p in pairs)
    assert len({(p["moving_image"], p["fixed_image"]) for p in pairs}) == 12
    atlas = expand_subject_pairs(subjects, "atlas", {"image": "atlas.nii.gz", "label": "atlas_seg.nii.gz"})
    assert len(atlas) == 4 and all(p["moving_image"] == "atlas.nii.gz" for p in atlas)
    unlabelled = expand_subject_pairs([{"image": "a"}, {"image": "b"}], "all")
    assert "moving_label" not in unlabelled[0]
    with pytest.raises(ValueError, match="pairing"):
        expand_subject_pairs(subjects, "random")
    with pytest.raises(ValueError, match="atlas"):
        expand_subject_pairs(subjects, "atlas")


def test_load_pairs_from_subject_lists_with_relative_paths(tmp_path):
    for i in range(3):
        nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)), str(tmp_path / f"s{i}.nii.gz"))
    (tmp_path / "datalist.json").write_text(json.dumps({"training": {"subjects": [{"image": f"s{i}.nii.gz"} for i in range(3)]}}))
    pairs = load_pairs(tmp_path / "datalist.json", "training")
    assert len(pairs) == 6 and all(p["fixed_image"].startswith(str(tmp_path)) for p in pairs)
    with pytest.raises(ValueError, match="validation"):
        load_pairs(tmp_path / "datalist.json", "validation")
    with pytest.raises(FileNotFoundError, match="datalist"):
        load_pairs(tmp_path / "missing.json", "training")


def test_not_an_image_is_named(tmp_path):
    (tmp_path / "notes.nii.gz").write_text("not an image")
    good = tmp_path / "good.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)), str(good))
    (tmp_path / "d.json").write_text(json.dumps({"training": [{"moving_image": "notes.nii.gz", "fixed_image": "good.nii.gz"}]}))
    with pytest.raises(ValueError, match=r"training\[0\].*notes.nii.gz.*not an image"):
        load_pairs(tmp_path / "d.json", "training")


def test_demo_dataset_is_written_once_and_deterministic(tmp_path):
    path = ensure_datalist(tmp_path / "a", size=16, num_training=2, num_validation=1, num_testing=1)
    data = json.loads(open(path).read())
    assert [len(data[k]) for k in ("training", "validation", "testing")] == [2, 1, 1]
    first = nib.load(str(tmp_path / "a" / data["training"][0]["moving_image"]))
    assert first.shape == (16, 16, 16) and np.allclose(np.diag(first.affine)[:3], 2.0)
    again = ensure_datalist(tmp_path / "b", size=16, num_training=2, num_validation=1, num_testing=1)
    assert json.loads(open(again).read()) == data  # same datalist (relative paths) in another folder
    second = nib.load(str(tmp_path / "b" / data["training"][0]["moving_image"]))
    assert np.array_equal(first.get_fdata(), second.get_fdata())
    (tmp_path / "a" / "datalist.json").write_text(json.dumps({"training": []}))
    assert ensure_datalist(tmp_path / "a") == path  # an existing datalist (the user's data) is never overwritten
    assert json.loads(open(path).read()) == {"training": []}
    with pytest.raises(ValueError, match="demo"):
        ensure_datalist(tmp_path / "c", demo="ct")


def test_multimodal_pairs_share_labels_but_not_intensities():
    pair = synthetic_pair((16, 16, 16), multimodal=True, seed=5)
    mono = synthetic_pair((16, 16, 16), multimodal=False, seed=5)
    assert torch.equal(pair["moving_label"], mono["moving_label"])
    assert not torch.allclose(pair["moving_image"], mono["moving_image"])


def test_pair_transforms_intensities_and_spacing(tmp_path):
    ct = np.linspace(-1000, 1000, 8 * 8 * 8, dtype=np.float32).reshape(8, 8, 8)
    nib.save(nib.Nifti1Image(ct, np.diag([2.0, 2.0, 2.0, 1.0])), str(tmp_path / "ct.nii.gz"))
    nib.save(nib.Nifti1Image(np.abs(ct), np.diag([2.0, 2.0, 2.0, 1.0])), str(tmp_path / "mr.nii.gz"))
    entry = {"moving_image": str(tmp_path / "mr.nii.gz"), "fixed_image": str(tmp_path / "ct.nii.gz")}
    out = pair_transforms(moving_intensity="mr", fixed_intensity="ct", pixdim=(4.0, 4.0, 4.0))(entry)
    fixed, moving = out["fixed_image"], out["moving_image"]
    assert fixed.shape[1:] == (4, 4, 4) and moving.shape == fixed.shape  # moving resampled onto the fixed grid
    assert float(fixed.min()) >= 0.0 and float(fixed.max()) <= 1.0
    assert float(moving.max()) <= 1.0
    with pytest.raises(ValueError, match="intensity"):
        pair_transforms(moving_intensity="zscore")
    bad = ct.copy()
    bad[2, 3, 4] = np.nan
    nib.save(nib.Nifti1Image(bad, np.eye(4)), str(tmp_path / "nan.nii.gz"))
    with pytest.raises(RuntimeError) as err:  # MONAI's Compose wraps a transform's error, keeping it as the cause
        pair_transforms()({**entry, "moving_image": str(tmp_path / "nan.nii.gz")})
    assert isinstance(err.value.__cause__, ValueError)
    assert "moving_image" in str(err.value.__cause__) and "nan.nii.gz contains NaN or Inf" in str(err.value.__cause__)


@pytest.mark.parametrize(
    "affine",
    [np.diag([2.0, 2.0, 2.0, 1.0]), np.array([[0, 0, 1.5, 10], [-2.0, 0, 0, 5], [0, 1.2, 0, -3], [0, 0, 0, 1]])],
)
def test_itk_displacement_field_reproduces_our_warp(tmp_path, affine):
    """ITK's WarpImageFilter with the written field gives our Warp result (axis-aligned and rotated, anisotropic)."""
    import itk
    from monai.networks.blocks import Warp
    from monai.transforms import LoadImage

    from monai_moe_reg.data import random_smooth_ddf
    from monai_moe_reg.data.displacement_io import write_itk_displacement_field

    pair = synthetic_pair((24, 28, 20), seed=3)
    nib.save(nib.Nifti1Image(pair["moving_image"][0].numpy(), affine), str(tmp_path / "m.nii.gz"))
    nib.save(nib.Nifti1Image(pair["fixed_image"][0].numpy(), affine), str(tmp_path / "f.nii.gz"))
    load = LoadImage(image_only=True, ensure_channel_first=True)
    moving, fixed = load(str(tmp_path / "m.nii.gz")), load(str(tmp_path / "f.nii.gz"))
    ddf = random_smooth_ddf((24, 28, 20), 3.0, seed=9)
    ours = Warp(padding_mode="zeros")(moving[None].as_tensor(), ddf[None])[0, 0].numpy()
    write_itk_displacement_field(ddf, fixed.affine, tmp_path / "ddf_itk.nii.gz")
    warped = itk.warp_image_filter(
        itk.imread(str(tmp_path / "m.nii.gz"), itk.F),
        displacement_field=itk.imread(str(tmp_path / "ddf_itk.nii.gz")),
        output_parameters_from_image=itk.imread(str(tmp_path / "f.nii.gz"), itk.F),
    )
    theirs = np.transpose(itk.array_from_image(warped), (2, 1, 0))
    assert np.corrcoef(ours.ravel(), theirs.ravel())[0, 1] > 0.99


@pytest.mark.parametrize(
    "affine",
    [np.diag([2.0, 2.0, 2.0, 1.0]), np.array([[0, 0, 1.5, 10], [-2.0, 0, 0, 5], [0, 1.2, 0, -3], [0, 0, 0, 1]])],
)
def test_transform_h5_reads_back_what_was_written(tmp_path, affine):
    """register's transform.h5 (float32, compressed field) gives back the affine stage, the fixed grid and the DDF;
    an affine-only file gives no field."""
    from monai_moe_reg.data import random_smooth_ddf
    from monai_moe_reg.data.displacement_io import read_itk_transform, write_itk_transform

    world = np.array([[0.98, -0.17, 0.0, 3.0], [0.17, 0.98, 0.05, -2.0], [0.0, -0.05, 1.1, 1.5], [0, 0, 0, 1]])
    ddf = random_smooth_ddf((24, 28, 20), 3.0, seed=9)
    write_itk_transform(tmp_path / "t.h5", affine, world, ddf)
    w, a, d = read_itk_transform(tmp_path / "t.h5")
    assert np.allclose(w, world) and np.allclose(a, affine)
    assert torch.allclose(d, ddf.float(), atol=1e-5)
    write_itk_transform(tmp_path / "affine.h5", affine, world)
    w, a, d = read_itk_transform(tmp_path / "affine.h5")
    assert np.allclose(w, world) and a is None and d is None
    (tmp_path / "bad.h5").write_bytes(b"not hdf5")
    with pytest.raises(ValueError, match="bad.h5' as an ITK HDF5 transform"):
        read_itk_transform(tmp_path / "bad.h5")


def _subjects(tmp_path, n=4, shapes=None):
    subjects = []
    for i in range(n):
        shape = shapes[i] if shapes else (12, 12, 12)
        img = np.random.default_rng(i).random(shape).astype(np.float32)
        lab = (img > 0.5).astype(np.uint8)
        nib.save(nib.Nifti1Image(img, np.eye(4)), str(tmp_path / f"s{i}.nii.gz"))
        nib.save(nib.Nifti1Image(lab, np.eye(4)), str(tmp_path / f"s{i}_seg.nii.gz"))
        subjects.append({"image": f"s{i}.nii.gz", "label": f"s{i}_seg.nii.gz"})
    return subjects


def test_subject_lists_become_cached_random_pairs(tmp_path):
    from monai.data import CacheDataset

    from monai_moe_reg.data import CachedPairs, pair_sampler, training_pairs

    subjects = _subjects(tmp_path)
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps({"training": {"subjects": subjects, "pairing": "all"},
                                "atlas_set": {"subjects": subjects[1:], "pairing": "atlas", "atlas": subjects[0]}}))
    ds = training_pairs(path, "training")
    assert isinstance(ds, CachedPairs) and isinstance(ds.moving, CacheDataset) and ds.moving is ds.fixed
    assert len(ds) == 12
    pairs = {ds.pair_indices(k) for k in range(len(ds))}
    assert pairs == {(m, f) for m in range(4) for f in range(4) if m != f}  # every ordered pair, never m == f
    item = ds[5]
    m, f = ds.pair_indices(5)
    assert torch.equal(item["moving_image"], ds.moving[m]["image"]) and "fixed_label" in item
    atlas = training_pairs(path, "atlas_set")
    assert len(atlas) == 3 and all(atlas.pair_indices(k) == (0, k) for k in range(3)) and len(atlas.moving) == 1
    torch.manual_seed(0)
    drawn = list(pair_sampler(ds, epoch_length=25))
    torch.manual_seed(0)
    assert len(drawn) == 25 and drawn == list(pair_sampler(ds, epoch_length=25))  # reproducible from torch's RNG
    assert sorted(pair_sampler(ds)) == list(range(12))
    with pytest.raises(ValueError, match="epoch_length"):
        pair_sampler(ds, 0)
    with pytest.raises(ValueError, match="subject list .* one modality"):
        training_pairs(path, "training", moving_intensity="mr", fixed_intensity="ct")


def test_subject_pairs_on_different_grids_are_resampled_to_the_fixed_one(tmp_path):
    from monai_moe_reg.data import training_pairs

    subjects = _subjects(tmp_path, n=2, shapes=[(12, 12, 12), (10, 14, 12)])
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps({"training": {"subjects": subjects}}))
    ds = training_pairs(path, "training", cache="none")
    item = ds[0]
    assert item["moving_image"].shape == item["fixed_image"].shape == item["moving_label"].shape


def test_pair_lists_cache_each_distinct_image_once(tmp_path):
    from monai_moe_reg.data import training_pairs

    subjects = _subjects(tmp_path, n=5)
    entries = [{"moving_image": subjects[m]["image"], "moving_label": subjects[m]["label"],
                "fixed_image": subjects[f]["image"], "fixed_label": subjects[f]["label"]}
               for m in (0, 1) for f in (2, 3, 4)]  # unpaired MR x CT style: 2 moving, 3 fixed, 6 pairs
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps({"training": entries}))
    ds = training_pairs(path, "training", moving_intensity="mr", fixed_intensity="ct")
    assert len(ds) == 6 and len(ds.moving) == 2 and len(ds.fixed) == 3
    item = ds[4]
    assert item["moving_image"].shape == item["fixed_image"].shape and float(item["fixed_image"].max()) <= 1.0


def test_bad_cache_mode_and_atlas_without_image_are_named(tmp_path):
    from monai_moe_reg.data import training_pairs

    subjects = _subjects(tmp_path, n=2)
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps({"training": {"subjects": subjects}, "atlas_set": {"subjects": subjects,
                                                                                  "pairing": "atlas"}}))
    with pytest.raises(ValueError, match="cache must be one of"):
        training_pairs(path, "training", cache="gpu")
    with pytest.raises(ValueError, match="cache='disk' needs a cache_dir"):
        training_pairs(path, "training", cache="disk")
    with pytest.raises(ValueError, match="'atlas' pairing but has no 'atlas'"):
        training_pairs(path, "atlas_set")


def test_no_demo_data_among_user_scans_and_no_section_dropped_silently(tmp_path):
    """A dataset_dir holding scans but no datalist.json is an error naming `prepare` (nothing is written there); the
    demo set goes to an empty or new folder and `prepare` refuses it as scans; a split that leaves a section one
    subject (no pair) is an error, and the default split never does."""
    from monai_moe_reg.data.demo_dataset import ensure_datalist
    from monai_moe_reg.data.layouts import prepare_datalist

    mine = tmp_path / "my_scans"
    (mine / "images").mkdir(parents=True)
    (mine / "labels").mkdir()
    for i in range(5):
        for sub in ("images", "labels"):
            nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), str(mine / sub / f"s{i}.nii.gz"))
    before = sorted(p.name for p in mine.rglob("*"))
    with pytest.raises(ValueError, match="holds files but no datalist.json: write one for your scans with"):
        ensure_datalist(mine)
    assert sorted(p.name for p in mine.rglob("*")) == before
    demo = Path(ensure_datalist(tmp_path / "demo", size=16))
    assert demo.is_file() and (demo.parent / "SYNTHETIC_DEMO_DATA.txt").is_file()
    with pytest.raises(ValueError, match="synthetic demo set"):
        prepare_datalist("folder", demo.parent, tmp_path / "d.json")
    with pytest.raises(ValueError, match="validation section gets 1 subject"):
        prepare_datalist("folder", mine, tmp_path / "d.json", split="3,1,1")
    for n in (5, 10):
        for i in range(5, n):
            for sub in ("images", "labels"):
                nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), str(mine / sub / f"s{i}.nii.gz"))
        data = json.loads(prepare_datalist("folder", mine, tmp_path / "d.json").read_text())
        assert all(len(sec["subjects"]) >= 2 for sec in data.values()) and len(data) >= 2, data.keys()
