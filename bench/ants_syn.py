"""ANTs SyN reference for bench/register_real.py, run by the Python of its own virtual environment (antspyx needs
numpy < 2.4, so it cannot share ours; see README, "Benchmarks"):

    .venv-ants/bin/python bench/ants_syn.py FIXED MOVING MOVING_LABEL OUT_DIR [--transform SyN|SyNOnly]
    .venv-ants/bin/python bench/ants_syn.py --apply FIXED MOVING TRANSFORM OUT_IMAGE

The first form registers (as a new user would: ``ants.registration`` with default settings, ``type_of_transform``
``"SyN"``: affine then SyN), warps the moving scan and its labels onto the fixed grid and writes ``warped_image``,
``warped_label``, ``warp`` (SyN's deformable displacement field on the fixed grid, LPS mm; the affine is applied
after it, so the Jacobian determinant of the whole map is det(A) times the warp's) and ``seconds.json``
(registration alone, the whole script after imports, the affine parameters). The
second form applies a transform file written by ``monai-moe-reg register`` (``transform.h5``) to the original
moving scan, to check that ANTs reads it as we mean it.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> None:
    start = time.perf_counter()
    import ants

    if argv[0] == "--apply":
        fixed, moving, transform, out = argv[1:5]
        warped = ants.apply_transforms(ants.image_read(fixed), ants.image_read(moving), [transform])
        ants.image_write(warped, out)
        return
    fixed_path, moving_path, label_path, out_dir = argv[:4]
    kind = argv[argv.index("--transform") + 1] if "--transform" in argv else "SyN"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fixed, moving = ants.image_read(fixed_path), ants.image_read(moving_path)
    t = time.perf_counter()
    reg = ants.registration(fixed, moving, type_of_transform=kind, outprefix=str(out / "ants_"))
    seconds = time.perf_counter() - t
    label = ants.image_read(label_path)
    ants.image_write(reg["warpedmovout"], str(out / "warped_image.nii.gz"))
    warped_label = ants.apply_transforms(fixed, label, reg["fwdtransforms"], interpolator="genericLabel")
    ants.image_write(warped_label, str(out / "warped_label.nii.gz"))
    warps = [p for p in reg["fwdtransforms"] if p.endswith(".nii.gz")]
    affines = [p for p in reg["fwdtransforms"] if p.endswith(".mat")]
    shutil.copy(warps[0], out / "warp.nii.gz")
    affine = [list(map(float, ants.read_transform(p).parameters)) for p in affines]
    (out / "seconds.json").write_text(json.dumps({
        "registration": seconds, "script": time.perf_counter() - start, "transform": kind, "affine_parameters": affine,
    }))


if __name__ == "__main__":
    main(sys.argv[1:])
