"""The development protocol's one subject split (issue 25): training / tuning / validation, seeded, written down.

    python bench/splits.py --data ../shared/data            # print the pairs of every role
    python bench/splits.py --data ../shared/data --write    # (re)write bench/splits.json (seed 0; done once)

``bench/splits.json`` is the record: which subjects of each real set of ``../shared/data`` train the shipped
weights, which pairs choose the defaults (``tuning``), and which pairs are reported (``validation``). It was written
once with seed 0 and is not to be re-drawn after looking at results. Rules:

- ``ixi`` (30 T1 subjects, 2 mm, skull on, 148 DLMUSE labels) and ``t1_flair`` (17 subjects; their T1s, same
  labels) are split by subject 60/20/20 (IXI 18/6/6, T1-FLAIR 9/4/4); a pair never mixes roles.
- ``fs1mm`` (the FreeSurfer brains at 1 mm: fsaverage, sample, niivue; the 30 labels of ``brain/eval_labels.json``)
  is **validation only**: nothing is tuned or trained on it, so its rows show how the defaults carry over to another
  resolution, preprocessing and label protocol. ``brain/subject_a`` is left out: its header carries no true
  orientation (identity affine, permuted axes), so it cannot be paired with the FreeSurfer-conformed brains.
- ``synthseg_label_maps`` (20 label maps, no images) are training data only.

Pairs are ordered (moving -> fixed) inter-subject pairs drawn, seeded, from the subjects of one role.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

SPLITS = Path(__file__).with_name("splits.json")
SEED = 0
FS1MM = ("fsaverage", "sample", "niivue")
PAIRS_PER_ROLE = {"ixi": {"tuning": 12, "validation": 10}, "t1_flair": {"tuning": 6, "validation": 6}}


def _subjects(data: Path) -> dict[str, list[str]]:
    ixi = sorted(p.name.replace("_T1.nii.gz", "") for p in (data / "ixi" / "t1").glob("IXI*_T1.nii.gz"))
    t1f = sorted((p.name.replace("_T1.nii.gz", "") for p in (data / "t1_flair" / "t1").glob("Subj*_T1.nii.gz")),
                 key=lambda s: int(s[4:]))
    if len(ixi) != 30 or len(t1f) != 17:
        raise FileNotFoundError(f"expected 30 IXI and 17 T1-FLAIR subjects under '{data}', found {len(ixi)} and "
                                f"{len(t1f)}: pass the data folder of ../shared/data/README.md as --data.")
    return {"ixi": ixi, "t1_flair": t1f}


def make_splits(data: Path) -> dict:
    rng = random.Random(SEED)
    out: dict = {"seed": SEED, "note": "written once; never re-drawn after results were seen (bench/splits.py)"}
    for name, subjects in _subjects(data).items():
        order = subjects[:]
        rng.shuffle(order)
        n_tune = n_val = round(0.2 * len(order))
        roles = {"training": sorted(order[n_tune + n_val:]), "tuning": sorted(order[:n_tune]),
                 "validation": sorted(order[n_tune:n_tune + n_val])}
        pairs = {}
        for role in ("tuning", "validation"):
            every = [(m, f) for m in roles[role] for f in roles[role] if m != f]
            pairs[role] = sorted(rng.sample(every, min(PAIRS_PER_ROLE[name][role], len(every))))
        out[name] = {"subjects": roles, "pairs": pairs}
    out["fs1mm"] = {"subjects": {"validation": list(FS1MM)},
                    "pairs": {"validation": [(m, f) for m in FS1MM for f in FS1MM if m != f]}}
    out["synthseg_label_maps"] = {"subjects": {"training": sorted(p.name for p in
                                                                  (data / "synthseg_label_maps").glob("*.nii.gz"))}}
    return out


def load_splits() -> dict:
    if not SPLITS.is_file():
        raise FileNotFoundError(f"{SPLITS} is missing: it is part of the repository (bench/splits.py --write made it).")
    return json.loads(SPLITS.read_text())


def _files(data: Path, dataset: str, subject: str) -> dict[str, str]:
    if dataset == "ixi":
        return {"image": str(data / "ixi" / "t1" / f"{subject}_T1.nii.gz"),
                "label": str(data / "ixi" / "dlmuse" / f"{subject}_T1_DLMUSE.nii.gz")}
    if dataset == "t1_flair":
        return {"image": str(data / "t1_flair" / "t1" / f"{subject}_T1.nii.gz"),
                "label": str(data / "t1_flair" / "dlmuse" / f"{subject}_T1_DLMUSE.nii.gz")}
    if dataset == "fs1mm":
        image = {"fsaverage": "fsaverage_brain", "sample": "sample_brain", "niivue": "niivue_norm"}[subject]
        label = {"fsaverage": "fsaverage_aseg", "sample": "sample_aseg", "niivue": "niivue_aparc.a2009s+aseg"}[subject]
        folder = data / "freesurfer"
        return {"image": str(folder / f"{image}.nii.gz"), "label": str(folder / f"{label}.nii.gz")}
    raise ValueError(f"unknown dataset {dataset!r}")


def eval_labels(data: Path, dataset: str) -> list[int] | None:
    """The label ids scored: the 30 of ``brain/eval_labels.json`` for the FreeSurfer brains, every id of the fixed
    map (``None``) for the DLMUSE sets."""
    if dataset == "fs1mm":
        return json.loads((data / "brain" / "eval_labels.json").read_text())["labels"]
    return None


def pairs(data: Path, role: str, datasets: tuple[str, ...] = ("ixi", "fs1mm")) -> list[dict]:
    """The recorded pairs of ``role`` (``"tuning"`` or ``"validation"``), with file paths."""
    splits = load_splits()
    out = []
    for dataset in datasets:
        for m, f in splits[dataset]["pairs"].get(role, []):
            fm, ff = _files(data, dataset, m), _files(data, dataset, f)
            for p in (*fm.values(), *ff.values()):
                if not Path(p).is_file():
                    raise FileNotFoundError(f"'{p}' is missing: pass the data folder of ../shared/data/README.md.")
            out.append({"name": f"{dataset} {m}->{f}", "dataset": dataset, "moving": fm["image"], "fixed": ff["image"],
                        "moving_label": fm["label"], "fixed_label": ff["label"]})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--write", action="store_true", help="write bench/splits.json (once)")
    args = parser.parse_args()
    data = Path(args.data)
    if args.write:
        tmp = SPLITS.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(make_splits(data), indent=1) + "\n")
        tmp.replace(SPLITS)
    for role in ("tuning", "validation"):
        ps = pairs(data, role, ("ixi", "t1_flair", "fs1mm"))
        print(f"{role}: {len(ps)} pairs")
        for p in ps:
            print("  ", p["name"])


if __name__ == "__main__":
    main()
