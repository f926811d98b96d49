"""Training data on real anatomy for the shipped SHMoAReg weights (issue 25, item 3).

The training subjects of ``bench/splits.json`` (IXI T1 and the T1 of the T1-FLAIR set: the same 148 DLMUSE regions)
are brought into one frame the way ``register`` brings a pair before its network: each subject's T1 is registered
to a template with the bundle's own affine stage (``Registrar`` with ``affine="only"``, its defaults), and resampled
with its labels onto the template grid, which is the first IXI training subject's grid reoriented to RAS (the
network's orientation, see ``Registrar._network_ddf``). Any two prepared subjects are then an affine-aligned pair at
the network's working spacing (2 mm). The DLMUSE ids are relabelled 1..148 (0 background) for the Dice term; the map
is written to ``label_ids.json``. Tuning subjects are prepared the same way for the training's validation pairs
(never the validation subjects of the protocol).

    python bench/prepare_brain_training.py ../shared/data /tmp/brain_train

writes ``/tmp/brain_train/{images,labels}/*.nii.gz``, ``datalist.json`` (``training``: all ordered pairs of the
training subjects; ``validation``: ``--val-pairs`` fixed pairs of tuning subjects) and ``label_ids.json``; train with
``bundles/shmoareg/configs/recipes/brain_t1.json`` (see there).
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from splits import _files, load_splits  # noqa: E402


def _subject_files(data: Path, dataset: str, subject: str) -> tuple[str, str]:
    f = _files(data, dataset, subject)
    return f["image"], f["label"]


def _write(array: np.ndarray, affine: np.ndarray, path: Path, dtype) -> None:
    tmp = path.with_name(".part-" + path.name)
    nib.save(nib.Nifti1Image(array.astype(dtype), affine), str(tmp))
    tmp.replace(path)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path, help="the shared data folder (holds ixi/ and t1_flair/)")
    ap.add_argument("output", type=Path)
    ap.add_argument("--bundle", default=str(HERE.parent / "bundles" / "shmoareg"))
    ap.add_argument("--val-pairs", type=int, default=6)
    args = ap.parse_args(argv)

    from monai_moe_reg.apps.registration import Registrar

    splits = load_splits()
    train = [(d, s) for d in ("ixi", "t1_flair") for s in splits[d]["subjects"]["training"]]
    tune = [(d, s) for d in ("ixi", "t1_flair") for s in splits[d]["subjects"]["tuning"]]
    out = args.output
    for sub in ("images", "labels"):
        (out / sub).mkdir(parents=True, exist_ok=True)

    template_img, _ = _subject_files(args.data, *train[0])
    canonical = nib.as_closest_canonical(nib.load(str(template_img)))
    template = out / "template_T1.nii.gz"
    _write(np.asarray(canonical.dataobj, dtype=np.float32), canonical.affine, template, np.float32)

    ids = set()
    for d, s in train + tune:
        ids |= set(np.unique(np.asarray(nib.load(_subject_files(args.data, d, s)[1]).dataobj)).astype(int))
    ids = sorted(int(i) for i in ids if i != 0)
    lut = np.zeros(max(ids) + 1, dtype=np.int16)
    lut[ids] = np.arange(1, len(ids) + 1)
    note = "training label k = ids[k-1]"
    (out / "label_ids.json").write_text(json.dumps({"background": 0, "ids": ids, "note": note}))

    reg = Registrar.from_bundle(args.bundle, network="off")
    entries = {}
    for d, s in train + tune:
        img, lab = _subject_files(args.data, d, s)
        t = time.perf_counter()
        res = reg(str(template), str(img), moving_label=str(lab), affine="only")
        affine = res.fixed.affine.numpy() if hasattr(res.fixed, "affine") else canonical.affine
        name = f"{d}_{s}.nii.gz"
        _write(res.warped_image[0].numpy(), affine, out / "images" / name, np.float32)
        _write(lut[res.warped_label[0].numpy().astype(int)], affine, out / "labels" / name, np.int16)
        entries[(d, s)] = {"image": str((out / "images" / name).resolve()),
                           "label": str((out / "labels" / name).resolve())}
        print(f"{d}/{s}: affine to the template in {time.perf_counter() - t:.1f} s", flush=True)

    rng = random.Random(0)
    tune_pairs = list(itertools.permutations(tune, 2))
    rng.shuffle(tune_pairs)
    val = [{"moving_image": entries[m]["image"], "moving_label": entries[m]["label"],
            "fixed_image": entries[f]["image"], "fixed_label": entries[f]["label"]}
           for m, f in tune_pairs[: args.val_pairs]]
    datalist = {"training": {"subjects": [entries[k] for k in train], "pairing": "all"}, "validation": val,
                "note": "bench/prepare_brain_training.py: training subjects of bench/splits.json, affine-aligned to "
                        f"{train[0][0]}/{train[0][1]} (RAS); validation pairs from tuning subjects"}
    tmp = out / ".datalist.json.part"
    tmp.write_text(json.dumps(datalist, indent=1))
    tmp.replace(out / "datalist.json")
    print(f"{len(train)} training subjects ({len(train) * (len(train) - 1)} pairs), {len(val)} validation pairs, "
          f"{len(ids)} labels -> {out / 'datalist.json'}")


if __name__ == "__main__":
    main()
