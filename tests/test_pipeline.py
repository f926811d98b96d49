"""One pipeline behind every entry point: the bundle's ``inference.json`` / ``evaluate.json`` workflows and
``monai-moe-reg register`` / ``evaluate`` give the same files and numbers for the same pairs (shipped weights,
network on, the bundle's registration section)."""

import csv
import json
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
from monai.bundle import ConfigWorkflow

from monai_moe_reg.cli import CLI
from monai_moe_reg.data import ensure_datalist

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundles" / "shmoareg"


def _workflow(configs, kind, **override):
    files = [str(BUNDLE / "configs" / c) for c in configs]
    return ConfigWorkflow(config_file=files if len(files) > 1 else files[0],
                          meta_file=str(BUNDLE / "configs" / "metadata.json"), workflow_type=kind, **override)


def _rows(path: Path) -> list[dict]:
    with open(path) as fh:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(fh)]


def test_bundle_workflows_and_cli_give_the_same_results(tmp_path):
    datalist = ensure_datalist(tmp_path / "data", size=32, num_training=1, num_validation=1, num_testing=2)
    common = {"bundle_root": str(BUNDLE), "dataset_dir": str(tmp_path / "data"), "ckpt_dir": str(tmp_path / "models"),
              "network_mode": "on"}
    infer = _workflow(["inference.json"], "infer", **common, output_dir=str(tmp_path / "bundle"))
    infer.initialize()
    assert infer.evaluator.registrar.network is not None  # the shipped weights, in the whole pipeline
    infer.run()

    pair = json.loads(Path(datalist).read_text())["testing"][0]
    files = {k: str(tmp_path / "data" / v) for k, v in pair.items()}
    folder = Path(CLI().register(files["fixed_image"], files["moving_image"], str(tmp_path / "cli"), bundle=str(BUNDLE),
                                 fixed_label=files["fixed_label"], moving_label=files["moving_label"], network="on"))
    bundle_folder = tmp_path / "bundle" / folder.name
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in bundle_folder.iterdir())
    for name in ("warped_image.nii.gz", "warped_label.nii.gz"):
        a, b = nib.load(str(folder / name)), nib.load(str(bundle_folder / name))
        assert np.allclose(a.affine, b.affine) and np.allclose(a.get_fdata(), b.get_fdata(), atol=1e-5), name
    with h5py.File(folder / "transform.h5") as a, h5py.File(bundle_folder / "transform.h5") as b:
        names = []
        a.visit(names.append)
        for key in names:
            if isinstance(a[key], h5py.Dataset):
                assert np.allclose(a[key][()], b[key][()], atol=1e-5) if a[key].dtype.kind == "f" else \
                    np.array_equal(a[key][()], b[key][()]), key
    ma, mb = (json.loads((f / "metrics.json").read_text()) for f in (folder, bundle_folder))
    ma.pop("seconds"), mb.pop("seconds")
    assert ma.keys() == mb.keys() and all(np.isclose(ma[k], mb[k], atol=1e-5) for k in ma if k != "labels"), (ma, mb)

    # evaluation: the bundle's evaluate.json (on top of train.json) and monai-moe-reg evaluate, same rows
    evaluate = _workflow(["train.json", "evaluate.json"], "eval", **common, output_dir=str(tmp_path / "eval"))
    evaluate.initialize()
    evaluate.run()
    CLI().evaluate(datalist, bundle=str(BUNDLE), output=str(tmp_path / "cli_eval" / "metrics.csv"), network="on")
    a, b = _rows(tmp_path / "eval" / "metrics.csv"), _rows(tmp_path / "cli_eval" / "metrics.csv")
    assert len(a) == 2 and [r["pair"] for r in a] == [r["pair"] for r in b]
    for ra, rb in zip(a, b):
        assert all(np.isclose(float(ra[k]), float(rb[k]), atol=1e-5) for k in ra if k != "pair"), (ra, rb)
    for name in ("metrics_summary.csv", "metrics_summary.md"):
        assert (tmp_path / "eval" / name).is_file() and (tmp_path / "cli_eval" / name).is_file()
