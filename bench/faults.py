"""Bad inputs and faults against the CLI, the network API, checkpoints, datalists and LLM sources.

Every case says what a careful user should get: a clear error (one line, naming the problem) or a correct result.
Each outcome is classified as

- ``clean error``: the expected refusal, one line (CLI: exit status 2 and one stderr line; API: ``ValueError`` /
  ``FileNotFoundError`` / ``FileExistsError`` / ``IndexError``), nothing written;
- ``worked``: the expected result, checked;
- ``traceback``: any other exception (or a multi-line CLI error);
- ``silent wrong``: a result where an error was due, or a result that fails its check;
- ``half-written``: a refusal that left files in the output folder;
- ``data lost``: files the program did not write (or finished results) were deleted or replaced;
- ``code executed``: a payload in a checkpoint or a bundle config ran without the user opting in.

    python bench/faults.py --out bench/results/faults.md

Small synthetic files (32^3) are written to a temporary folder; no real data is needed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHMOAREG = str(ROOT / "bundles" / "shmoareg")
API_ERRORS = (ValueError, FileNotFoundError, FileExistsError, IndexError)


def save(arr, path, affine=None) -> str:
    affine = np.diag([2.0, 2.0, 2.0, 1.0]) if affine is None else np.asarray(affine, dtype=np.float64)
    if abs(np.linalg.det(affine[:3, :3])) > 0:
        nib.save(nib.Nifti1Image(np.asarray(arr), affine), str(path))
        return str(path)
    hdr = nib.Nifti1Image(np.asarray(arr), np.eye(4)).header.copy()  # nibabel will not build a degenerate affine
    for i, row in enumerate(("srow_x", "srow_y", "srow_z")):
        hdr[row][:] = affine[i]
    hdr["sform_code"], hdr["qform_code"] = 1, 0
    nib.save(nib.Nifti1Image(np.asarray(arr), None, header=hdr), str(path))
    return str(path)


def run_cli(args: list[str]) -> tuple[int, str]:
    from monai_moe_reg.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            main(args)
            code = 0
        except SystemExit as e:
            code = int(e.code or 0)
    return code, err.getvalue().strip()


def classify_cli(args, expect: str, out: Path, check=None) -> tuple[str, str]:
    try:
        code, err = run_cli(args)
    except Exception as e:  # noqa: BLE001 - an escaped exception is what we count
        return "traceback", f"{type(e).__name__}: {str(e)[:120]}"
    written = out.is_dir() and any(out.rglob("*"))
    if code == 2:
        if expect != "error":
            return "unexpected refusal", err[:160]
        if written:
            return "half-written", err[:160]
        return ("clean error", err[:160]) if len(err.splitlines()) == 1 else ("traceback", err.splitlines()[-1][:160])
    if code != 0:
        return "traceback", err.splitlines()[-1][:160] if err else f"exit {code}"
    if expect == "error":
        return "silent wrong", "accepted"
    try:
        ok, why = check() if check else (True, "")
    except Exception as e:  # noqa: BLE001
        ok, why = False, f"check failed: {type(e).__name__}: {e}"
    return ("worked", why) if ok else ("silent wrong", why)


def classify_api(fn, expect: str, check=None) -> tuple[str, str]:
    try:
        result = fn()
    except API_ERRORS as e:
        msg = str(e)
        if expect == "error":
            return ("clean error", msg[:160]) if len(msg.splitlines()) == 1 else ("traceback", msg[:160])
        return "traceback", msg[:160]
    except Exception as e:  # noqa: BLE001
        return "traceback", f"{type(e).__name__}: {str(e)[:140]}"
    if expect == "error":
        return "silent wrong", "accepted"
    ok, why = check(result) if check else (True, "")
    return ("worked", why) if ok else ("silent wrong", why)


def cases(d: Path):
    """Yield ``(group, name, runner)``; each runner returns ``(outcome, detail)``."""
    from monai_moe_reg.bundles import bundle_config
    from monai_moe_reg.data import load_pairs, synthetic_pair
    from monai_moe_reg.weights import load_network_weights
    from monai_moe_reg.llm import load_decoder_layers

    pair = synthetic_pair((32, 32, 32), max_disp=3.0, seed=5)
    img = lambda t: t[0].numpy().astype(np.float32)  # noqa: E731
    lab = lambda t: t[0].numpy().astype(np.int16)  # noqa: E731
    f = {"fixed": save(img(pair["fixed_image"]), d / "fixed.nii.gz"),
         "moving": save(img(pair["moving_image"]), d / "moving.nii.gz"),
         "fixed_label": save(lab(pair["fixed_label"]), d / "fixed_seg.nii.gz"),
         "moving_label": save(lab(pair["moving_label"]), d / "moving_seg.nii.gz")}
    net = bundle_config(SHMOAREG).get_parsed_content("network_def")
    ckpt = d / "model.pt"
    torch.save(net.state_dict(), ckpt)
    ckpt_bytes = ckpt.read_bytes()

    def bad(name: str, content: bytes) -> str:
        (d / name).write_bytes(content)
        return str(d / name)

    def variant(name: str, arr, affine=None) -> str:
        return save(arr, d / name, affine)

    mov = img(pair["moving_image"])
    nan, inf = mov.copy(), mov.copy()
    nan[3, 4, 5], inf[3, 4, 5] = np.nan, np.inf
    big_ids = lab(pair["moving_label"]).astype(np.int32) * 10000
    big_fixed = lab(pair["fixed_label"]).astype(np.int32) * 10000
    counter = iter(range(10**6))

    def cli(extra: list[str], expect: str, check=None, base: bool = True):
        out = d / f"out{next(counter)}"
        args = (["register", "--fixed", f["fixed"], "--bundle", SHMOAREG, "--checkpoint", str(ckpt),
                 "--instance-opt", "3", "--output", str(out)] if base else []) + extra
        chk = (lambda: check(out)) if check else None
        return lambda: classify_cli(args, expect, out, chk)

    def outputs(out: Path) -> dict:
        folder = next(p for p in out.iterdir() if p.is_dir())
        return {p.name: p for p in folder.iterdir()}

    def labels_kept(out):
        w = nib.load(str(outputs(out)["warped_label.nii.gz"])).get_fdata()
        ids = set(np.unique(w).astype(int)) - {0}
        return ids <= set(np.unique(big_ids).astype(int)) and max(ids) >= 40000, f"label ids {sorted(ids)[:3]}..."

    def has(name):
        return lambda out: (name in outputs(out), f"{name} written")

    def finite_metrics(out):
        m = json.loads(outputs(out)["metrics.json"].read_text())
        return all(np.isfinite(v) for v in m.values() if isinstance(v, float)), "finite metrics"

    mv = ["--moving", f["moving"]]
    cli_cases = {
        "moving is a text file": cli(["--moving", bad("notes.nii.gz", b"not an image")], "error"),
        "missing moving file": cli(["--moving", str(d / "nope.nii.gz")], "error"),
        "2-D moving image": cli(["--moving", variant("flat.nii.gz", mov[:, :, 0])], "error"),
        "NaN voxel": cli(["--moving", variant("nan.nii.gz", nan)], "error"),
        "Inf voxel": cli(["--moving", variant("inf.nii.gz", inf)], "error"),
        "4-D image, 3 components": cli(["--moving", variant("vec.nii.gz", np.stack([mov] * 3, -1))], "error"),
        "zero sform/qform affine": cli(["--moving", variant("zero_aff.nii.gz", mov, np.zeros((4, 4)))], "error"),
        "singular affine": cli(["--moving", variant("sing.nii.gz", mov, np.diag([1.0, 0.0, 1.0, 1.0]))], "error"),
        "intensities x1e30": cli(["--moving", variant("huge.nii.gz", mov * 1e30)], "works", finite_metrics),
        "constant (all-zero) moving": cli(["--moving", variant("zeros.nii.gz", np.zeros_like(mov))], "works",
                                          finite_metrics),
        "1x1x1 moving image": cli(["--moving", variant("one.nii.gz", np.ones((1, 1, 1), np.float32))], "error"),
        "empty moving label": cli(mv + ["--moving-label", variant("empty.nii.gz", np.zeros((32,) * 3, np.int16)),
                                        "--fixed-label", f["fixed_label"]], "error"),
        "negative label values": cli(mv + ["--moving-label", variant("neg.nii.gz", -lab(pair["moving_label"])),
                                           "--fixed-label", f["fixed_label"]], "error"),
        "label ids above 32767": cli(mv + ["--moving-label", variant("big.nii.gz", big_ids), "--fixed-label",
                                           variant("bigf.nii.gz", big_fixed)], "works", labels_kept),
        # a label map on its own grid is placed by its affine (world coordinates), as ITK and ANTs do
        "label on another grid than its image": cli(mv + ["--moving-label", variant("small_seg.nii.gz",
                                                          lab(pair["moving_label"])[:16]), "--fixed-label",
                                                          f["fixed_label"]], "works", has("warped_label.nii.gz")),
        "--fixed-label alone": cli(mv + ["--fixed-label", f["fixed_label"]], "error"),
        "--moving-label alone (atlas)": cli(mv + ["--moving-label", f["moving_label"]], "works",
                                            has("warped_label.nii.gz")),
        "--instance-opt -5": cli(mv + ["--instance-opt=-5"], "error"),
        "--io-lambda -1": cli(mv + ["--io-lambda=-1"], "error"),
        "--lr 0": cli(mv + ["--lr", "0"], "error"),
        "--affine bogus": cli(mv + ["--affine", "bogus"], "error"),
        "--network bogus": cli(mv + ["--network", "bogus"], "error"),
        "--device cuda without CUDA": cli(mv + ["--device", "cuda"], "error" if not torch.cuda.is_available()
                                          else "works"),
        "--device nonsense": cli(mv + ["--device", "tpu7"], "error"),
        "--output is a file": cli(["register", "--fixed", f["fixed"], "--moving", f["moving"], "--bundle", SHMOAREG,
                                   "--checkpoint", str(ckpt), "--output", bad("afile", b"x")], "error", base=False),
        "--output 2024 (a number)": lambda: classify_cli(
            ["register", "--fixed", f["fixed"], "--moving", f["moving"], "--bundle", SHMOAREG, "--checkpoint",
             str(ckpt), "--instance-opt", "2", "--output", "2024"], "works", Path("2024"),
            lambda: (Path("2024").is_dir(), "folder 2024")),
        "no --output": cli(["register", "--fixed", f["fixed"], "--moving", f["moving"]], "error", base=False),
        "bundle folder missing": cli(mv + ["--bundle", str(d / "nobundle")], "error"),
        "checkpoint: random bytes": cli(mv + ["--checkpoint", bad("rand.pt", os.urandom(4096))], "error"),
        "checkpoint: truncated": cli(mv + ["--checkpoint", bad("trunc.pt", ckpt_bytes[: len(ckpt_bytes) // 2])],
                                     "error"),
        "checkpoint: empty": cli(mv + ["--checkpoint", bad("empty.pt", b"")], "error"),
        "--network on, no checkpoint": cli(["register", "--fixed", f["fixed"], "--moving", f["moving"], "--bundle",
                                            SHMOAREG, "--checkpoint", str(d / "none.pt"), "--network", "on",
                                            "--output", str(d / "outx")], "error", base=False),
        "evaluate: missing datalist": cli(["evaluate", "--datalist", str(d / "none.json"), "--output",
                                           str(d / "ev")], "error", base=False),
    }
    for name, run in cli_cases.items():
        yield "CLI register/evaluate", name, run

    small = lambda: net  # noqa: E731
    x = torch.rand(1, 2, 32, 32, 32)
    finite = lambda y: (bool(torch.isfinite(y).all()) and y.shape[1] == 3, f"shape {tuple(y.shape)}")  # noqa: E731
    net.eval()
    api = {
        "3 channels": (lambda: small()(torch.rand(1, 3, 32, 32, 32)), "error", None),
        "2-D tensor for a 3-D net": (lambda: small()(torch.rand(1, 2, 32, 32)), "error", None),
        "NaN input": (lambda: small()(torch.full((1, 2, 32, 32, 32), float("nan"))), "error", None),
        "integer tensor": (lambda: small()(torch.zeros(1, 2, 32, 32, 32, dtype=torch.long)), "error", None),
        "a list of tensors": (lambda: small()([x[:, :1], x[:, 1:]]), "error", None),
        "batch size 0": (lambda: small()(torch.rand(0, 2, 32, 32, 32)), "error", None),
        "float16 input": (lambda: small()(x.half()), "works", finite),
        "bfloat16 input": (lambda: small()(x.bfloat16()), "works", finite),
        "float64 input": (lambda: small()(x.double()), "works", finite),
        "1x1x1 input": (lambda: small()(torch.rand(1, 2, 1, 1, 1)), "works", finite),
        "odd size 33x17x9": (lambda: small()(torch.rand(1, 2, 33, 17, 9)), "works",
                             lambda y: (y.shape == (1, 3, 33, 17, 9), str(tuple(y.shape)))),
        "input x1e30 (overflows a layer)": (lambda: small()(x * 1e30), "error", None),
    }

    def api_case(fn, expect, check):
        def run():
            with torch.no_grad():
                return classify_api(fn, expect, check)
        return run

    for name, (fn, expect, check) in api.items():
        yield "network API (SHMoAReg)", name, api_case(fn, expect, check)

    other = d / "other.pt"
    torch.save({"encoder_moving.levels.0.0.conv.weight": torch.zeros(1)}, other)
    (d / "list.pt").write_bytes(b"")
    torch.save([1, 2, 3], d / "list.pt")
    fresh = lambda: bundle_config(SHMOAREG).get_parsed_content("network_def")  # noqa: E731
    ck = {
        "missing file": str(d / "missing.pt"), "random bytes": str(d / "rand.pt"), "truncated": str(d / "trunc.pt"),
        "empty": str(d / "empty.pt"), "a pickled list": str(d / "list.pt"), "another network's weights": str(other),
    }
    for name, path in ck.items():
        yield "checkpoint loading", name, (lambda p=path: classify_api(lambda: load_network_weights(fresh(), p),
                                                                       "error"))
    yield "checkpoint loading", "matching weights", lambda: classify_api(
        lambda: load_network_weights(fresh(), str(ckpt)), "works")

    def datalist(name, text):
        p = d / name
        p.write_text(text)
        return str(p)

    entry = {"moving_image": f["moving"], "fixed_image": f["fixed"]}
    dl = {
        "missing datalist": (str(d / "nope.json"), "training", False),
        "truncated JSON": (datalist("trunc.json", '{"training": [{"moving_image": '), "training", False),
        "JSON list, not an object": (datalist("list.json", "[1, 2]"), "training", False),
        "empty training section": (datalist("empty.json", json.dumps({"training": []})), "training", False),
        "missing section": (datalist("nosec.json", json.dumps({"validation": [entry]})), "training", False),
        "entry without fixed_image": (datalist("nofix.json", json.dumps({"training": [{"moving_image": f["moving"]}]})),
                                      "training", False),
        "image file missing": (datalist("nofile.json", json.dumps({"training": [{**entry, "moving_image": "x.nii"}]})),
                               "training", False),
        "validation pairs without labels": (datalist("nolab.json", json.dumps({"validation": [entry]})), "validation",
                                            True),
    }
    for name, (path, section, need_labels) in dl.items():
        yield "datalists", name, (lambda p=path, s=section, r=need_labels: classify_api(
            lambda: load_pairs(p, s, require_labels=r) if r else load_pairs(p, s), "error"))

    sys.path.insert(0, str(ROOT / "tests"))
    from llm_fixtures import write_sharded_llama, write_tiny_gguf

    write_tiny_gguf(d / "tiny.gguf", num_layers=2)
    gg = (d / "tiny.gguf").read_bytes()
    write_sharded_llama(d / "llama", num_layers=8)
    llm = {
        "missing folder": (str(d / "nollm"), (0,)),
        "GGUF truncated": (bad("t.gguf", gg[: len(gg) // 2]), (1,)),
        "GGUF header only": (bad("h.gguf", gg[:100]), (1,)),
        "GGUF garbage": (bad("g.gguf", b"\x00junk" * 100), (1,)),
        "GGUF empty": (bad("e.gguf", b""), (1,)),
        "not a .gguf file": (bad("w.bin", b"x"), (0,)),
        "layer index out of range": (str(d / "llama"), (2, 11)),
        "no layers": (str(d / "llama"), ()),
        "shard missing": (None, (6,)),
    }
    for name, (src, layers) in llm.items():
        def run(src=src, layers=layers):
            if src is None:
                import shutil

                shutil.copytree(d / "llama", d / "llama_broken")
                shards = sorted((d / "llama_broken").glob("*.safetensors"))
                shards[-1].unlink()
                src = str(d / "llama_broken")
            return classify_api(lambda: load_decoder_layers(src, layers), "error")
        yield "LLM sources", name, run
    yield from safety_cases(d, f, ckpt)


def safety_cases(d: Path, f: dict, ckpt: Path):
    """Issue 20's cases: nothing deleted that the program did not write, nothing unpickled or executed without an
    opt-in, finished work kept, and bad run settings named. Each runner returns ``(outcome, detail)``."""
    import shutil
    import signal
    import subprocess

    from ignite.engine import Engine

    from monai_moe_reg.apps.registration import Registrar
    from monai_moe_reg.engines.resume import resume_from_latest
    from monai_moe_reg.weights import load_network_weights
    from monai_moe_reg.data.demo_dataset import ensure_datalist
    from monai_moe_reg.data.layouts import prepare_datalist
    from monai_moe_reg.engines import BestModelSaver
    from monai_moe_reg.networks.nets import SHMoAReg
    from monai_moe_reg.trust import TRUST_ENV
    from monai_moe_reg.zoo import export_zoo_bundle

    group = "nothing lost, nothing run"

    def refused(fn, intact=lambda: (True, ""), ran=lambda: False):
        """``fn`` must raise a one-line API error; ``intact`` must then still hold; ``ran`` must be false."""
        outcome, detail = classify_api(fn, "error")
        if ran():
            return "code executed", detail
        ok, why = intact()
        if not ok:
            return "data lost", why
        return outcome, detail

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {d / 'PWNED'}",))

    def booby_trapped_resume():
        models = d / "trap_models"
        models.mkdir()
        torch.save({"x": Payload()}, models / "checkpoint_checkpoint_5.pt")
        net = torch.nn.Linear(2, 2)
        trainer = Engine(lambda e, b: None)
        return refused(lambda: resume_from_latest(trainer, models, {"network": net, "trainer": trainer}),
                       ran=lambda: (d / "PWNED").exists())

    def tiny():
        return {"network_def#img_size": 32, "network_def#embed_dim": 12, "network_def#depths": [1, 1, 1, 1],
                "network_def#num_heads": [1, 1, 1, 1]}

    def zoo_over_bundle():
        copy = d / "bundle_copy"
        shutil.copytree(SHMOAREG, copy, ignore=shutil.ignore_patterns("data", "eval", "cache"))
        n = len(list(copy.rglob("*")))
        return refused(lambda: export_zoo_bundle(copy, copy, ckpt, force=True),
                       lambda: (len(list(copy.rglob("*"))) == n, "bundle files gone"))

    def zoo_bad_checkpoint():
        keep = d / "keep"
        keep.mkdir()
        (keep / "mine.txt").write_text("mine")
        return refused(lambda: export_zoo_bundle(SHMOAREG, keep, bad_ckpt, force=True),
                       lambda: ((keep / "mine.txt").is_file(), "keep/mine.txt deleted"))

    bad_ckpt = d / "bad_ckpt.pt"
    bad_ckpt.write_bytes(b"junk")

    def publish_over_inputs():
        out = d / "pubout"
        folder = out / "moving_to_fixed"
        folder.mkdir(parents=True)
        shutil.copy(f["moving"], folder / "moving.nii.gz")
        code, err = run_cli(["register", "--fixed", f["fixed"], "--moving", str(folder / "moving.nii.gz"),
                             "--output", str(out), "--bundle", SHMOAREG, "--network", "off", "--instance-opt", "1"])
        if not (folder / "moving.nii.gz").is_file():
            return "data lost", "the input inside the result folder was deleted"
        return ("clean error", err[:160]) if code == 2 and len(err.splitlines()) == 1 else ("traceback", err[-160:])

    def colliding_names():
        from monai_moe_reg.engines.handlers import RegistrationWriter

        w = RegistrationWriter(d / "collide")
        names = [w._unique("image_to_image"), w._unique("image_to_image")]
        return ("worked", f"{names}") if len(set(names)) == 2 else ("data lost", f"{names}")

    def demo_into_user_folder():
        mine = d / "my_scans"
        (mine / "images").mkdir(parents=True)
        shutil.copy(f["moving"], mine / "images" / "a.nii.gz")
        before = sorted(p.name for p in mine.rglob("*"))
        return refused(lambda: ensure_datalist(mine), lambda: (sorted(p.name for p in mine.rglob("*")) == before,
                                                               "files written into the user's folder"))

    def untrained_model_pt():
        models = d / "best"
        net = torch.nn.Linear(2, 2)
        saver = BestModelSaver(str(models), net)
        saver.attach(Engine(lambda e, b: None))
        ev = Engine(lambda e, b: None)
        ev.state.key_metric_name, ev.state.metrics, ev.state.epoch = "dice", {"dice": 1.0}, 0
        saver(ev)
        return ("worked", "no model.pt from the epoch-0 validation") if not (models / "model.pt").exists() else (
            "silent wrong", "model.pt written before training")

    def other_architecture():
        kw = dict(img_size=32, embed_dim=12, depths=(1, 1), num_heads=(2, 2), conv_channels=(8, 8))
        a = SHMoAReg(3, **kw)
        models = d / "arch"
        saver = BestModelSaver(str(models), a)
        saver.attach(Engine(lambda e, b: None))
        ev = Engine(lambda e, b: None)
        ev.state.key_metric_name, ev.state.metrics, ev.state.epoch = "dice", {"dice": 0.5}, 1
        saver(ev)
        return refused(lambda: load_network_weights(SHMoAReg(3, **kw, diffeomorphic=True), models / "model.pt"))

    def evaluate_unwritable():
        dl = d / "ev.json"
        dl.write_text(json.dumps({"testing": [{"moving_image": f["moving"], "fixed_image": f["fixed"]}]}))
        code, err = run_cli(["evaluate", "--datalist", str(dl), "--bundle", SHMOAREG, "--network", "off",
                             "--instance-opt", "1", "--output", "/proc/no_such/eval.csv"])
        return ("clean error", err[:160]) if code == 2 and len(err.splitlines()) == 1 else ("traceback", err[-160:])

    def evaluate_keeps_rows():
        whole = Path(f["moving"]).read_bytes()
        trunc = d / "trunc_scan.nii.gz"
        trunc.write_bytes(whole[: len(whole) * 3 // 5])
        good = {"moving_image": f["moving"], "fixed_image": f["fixed"]}
        dl = d / "ev2.json"
        dl.write_text(json.dumps({"testing": [good, {**good, "moving_image": str(trunc)}, good]}))
        code, err = run_cli(["evaluate", "--datalist", str(dl), "--bundle", SHMOAREG, "--network", "off",
                             "--instance-opt", "1", "--output", str(d / "ev2.csv")])
        rows = (d / "ev2.csv").read_text().splitlines() if (d / "ev2.csv").is_file() else []
        if len(rows) != 3:
            return "data lost", f"{len(rows) - 1 if rows else 0} of 2 finished rows kept"
        return ("clean error", err[:160]) if code == 2 and len(err.splitlines()) == 1 else ("traceback", err[-160:])

    def interrupted(sig, command="register"):
        def run():
            out = d / f"sig{sig}{command}"
            if command == "register":
                cmd = [sys.executable, "-m", "monai_moe_reg.cli", "register", "--fixed", f["fixed"], "--moving",
                       f["moving"], "--output", str(out), "--bundle", SHMOAREG, "--network", "off", "--affine", "off",
                       "--instance-opt", "100000"]
                ready = "network:"
            elif command == "evaluate":
                dl = d / "sig_ev.json"
                dl.write_text(json.dumps({"testing": [{"moving_image": f["moving"], "fixed_image": f["fixed"]}] * 60}))
                cmd = [sys.executable, "-m", "monai_moe_reg.cli", "evaluate", "--datalist", str(dl), "--bundle",
                       SHMOAREG, "--network", "off", "--affine", "off", "--instance-opt", "100000", "--output",
                       str(out / "eval.csv")]
                ready = "[2/60]"  # pairs converge in about a second each: interrupt between them
            else:  # training through MONAI's bundle runner, tiny network
                cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file",
                       str(Path(SHMOAREG) / "configs" / "train.json"), "--bundle_root", SHMOAREG, "--dataset_dir",
                       str(d / "sig_data"), "--ckpt_dir", str(out / "models"), "--output_dir", str(out / "eval"),
                       "--demo_size", "32", "--max_epochs", "50", "--epoch_length", "2", "--val_interval", "1",
                       "--network_def#depths", "[1, 1]", "--network_def#num_heads", "[2, 2]",
                       "--network_def#embed_dim", "12"]
                ready = "Epoch[2]"
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for line in proc.stdout:
                if ready in line:
                    break
            time.sleep(1.0 if command != "evaluate" else 0.5)
            proc.send_signal(getattr(signal, sig))
            err, _ = proc.communicate(timeout=300)
            stage = [p.name for p in out.rglob("*") if p.name.endswith((".part", ".tmp"))] if out.exists() else []
            if command == "register" and out.exists() and any(out.iterdir()):
                stage.append("a result folder")
            if stage:
                return "half-written", f"left {stage[:3]}"
            text = err.strip()
            one = proc.returncode == 130 and "Traceback" not in text and "interrupted" in text.splitlines()[-1]
            return ("clean error", text.splitlines()[-1][:160]) if one else ("traceback", text[-160:])
        return run

    def train_setting(override):
        def run():
            from monai.bundle import ConfigWorkflow

            wf = ConfigWorkflow(config_file=str(Path(SHMOAREG) / "configs" / "train.json"), workflow_type="train",
                                bundle_root=SHMOAREG, dataset_dir=str(d / "tds"), ckpt_dir=str(d / "tm"),
                                output_dir=str(d / "te"), **override)
            try:
                wf.initialize()
            except Exception as e:  # noqa: BLE001 - MONAI wraps the config's error: look for ours in the chain
                chain, cause = [], e
                while cause is not None:
                    chain.append(cause)
                    cause = cause.__cause__
                ours = [c for c in chain if isinstance(c, ValueError) and any(k in str(c) for k in override)]
                if ours:
                    return "clean error", str(ours[0])[:160]
                return "traceback", f"{type(chain[-1]).__name__}: {str(chain[-1])[:140]}"
            return "silent wrong", "accepted"
        return run

    def export_any_size():
        from monai_moe_reg.cli import CLI

        ts = CLI().export(bundle=SHMOAREG, output=str(d / "net.ts"), checkpoint=str(ckpt), size=32)
        y = torch.jit.load(ts)(torch.rand(1, 2, 40, 36, 44))
        return ("worked", "runs at 40x36x44") if y.shape == (1, 3, 40, 36, 44) else ("silent wrong", str(y.shape))

    def foreign_bundle(trust):
        def run():
            copy = d / f"evil{int(trust)}"
            shutil.copytree(SHMOAREG, copy, ignore=shutil.ignore_patterns("data", "eval", "cache", "models"))
            cfg = copy / "configs" / "inference.json"
            mark = d / f"EVIL{int(trust)}"
            cfg.write_text(cfg.read_text().replace('"network_smoothing": 1.0', f'"network_smoothing": "$__import__('
                                                   f"'os').system('touch {mark}') or 1.0\""))
            args = ["register", "--fixed", f["fixed"], "--moving", f["moving"], "--bundle", str(copy), "--network",
                    "off", "--instance-opt", "1", "--output", str(d / f"evil_out{int(trust)}")]
            code, err = run_cli(args + (["--trust-bundle"] if trust else []))
            os.environ.pop(TRUST_ENV, None)
            if trust:
                return ("worked", "ran with --trust-bundle") if code in (0, 2) else ("traceback", err[-160:])
            if mark.exists():
                return "code executed", "ran without an opt-in"
            return ("clean error", err[:160]) if code == 2 and len(err.splitlines()) == 1 else ("traceback", err[-160:])
        return run

    intensity = save((np.random.rand(32, 32, 32) * 500).astype(np.float32), d / "t1_as_label.nii.gz")
    (d / "dicom_dir").mkdir()
    base = ["register", "--fixed", f["fixed"], "--bundle", SHMOAREG, "--network", "off", "--instance-opt", "1"]

    def cli_refusal(extra):
        out = d / f"r{abs(hash(tuple(extra))) % 10**6}"
        return lambda: classify_cli(base + extra + ["--output", str(out)], "error", out)

    def prep_split():
        root = d / "prep"
        (root / "images").mkdir(parents=True)
        for i in range(5):
            shutil.copy(f["moving"], root / "images" / f"s{i}.nii.gz")
        return refused(lambda: prepare_datalist("folder", root, d / "prep.json", split="3,1,1"))

    def long_name():
        out = d / "long"
        res = Registrar.from_bundle(SHMOAREG, network="off")(f["fixed"], f["moving"], affine="only")
        folder = Registrar.write(res, out / ("n" * 250))
        mode = folder.stat().st_mode & 0o777
        return ("worked", f"written, mode {oct(mode)}") if mode != 0o700 else ("silent wrong", "mode 0700")

    cases = {
        "resume: booby-trapped checkpoint_*.pt": booby_trapped_resume,
        "zoo-export --force onto the bundle itself": zoo_over_bundle,
        "zoo-export --force, bad checkpoint, folder with files": zoo_bad_checkpoint,
        "register into a folder holding its input": publish_over_inputs,
        "inference: two pairs with the same file names": colliding_names,
        "train --dataset_dir with scans, no datalist": demo_into_user_folder,
        "model.pt from the epoch-0 validation": untrained_model_pt,
        "weights of another architecture (diffeomorphic)": other_architecture,
        "evaluate --output not writable": evaluate_unwritable,
        "evaluate: one truncated scan among 3": evaluate_keeps_rows,
        "SIGINT during register": interrupted("SIGINT"),
        "SIGTERM during register": interrupted("SIGTERM"),
        "SIGINT during evaluate": interrupted("SIGINT", "evaluate"),
        "SIGTERM during training (monai.bundle run)": interrupted("SIGTERM", "train"),
        "train --max_epochs 0": train_setting({"max_epochs": 0}),
        "train --val_interval 0": train_setting({"val_interval": 0}),
        "train --epoch_length 0": train_setting({"epoch_length": 0}),
        "train --cache disk to an unwritable folder": train_setting({"cache": "disk", "cache_dir": "/proc/no"}),
        "train --device cuda:abc": train_setting({"device": "cuda:abc"}),
        "export --size 32, run at another size": lambda: classify_api(export_any_size, "works",
                                                                      lambda r: (r[0] == "worked", r[1])),
        "an intensity image as --moving-label": cli_refusal(["--moving", f["moving"], "--moving-label", intensity]),
        "a folder (DICOM series) as --moving": cli_refusal(["--moving", str(d / "dicom_dir")]),
        "--io-lambda 1e999": cli_refusal(["--moving", f["moving"], "--io-lambda", "1e999"]),
        "prepare folder --split 3,1,1 (1-subject section)": prep_split,
        "a 250-character result name; folder mode": long_name,
        "foreign bundle code, no opt-in": foreign_bundle(False),
        "foreign bundle code, --trust-bundle": foreign_bundle(True),
    }
    for name, run in cases.items():
        yield group, name, run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "faults.md"))
    args = ap.parse_args()
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cwd = os.getcwd()
        os.chdir(tmp)  # relative outputs (--output 2024) land here
        try:
            for group, name, run in cases(Path(tmp)):
                try:
                    outcome, detail = run()
                except Exception as e:  # noqa: BLE001 - a bench bug, reported as such
                    outcome, detail = "bench error", "".join(traceback.format_exception_only(e)).strip()[:160]
                rows.append((group, name, outcome, detail.replace("|", "/").replace("\n", " ")))
                print(f"{group:24s} {name:34s} {outcome:13s} {detail[:90]}", flush=True)
        finally:
            os.chdir(cwd)
    counts = Counter(r[2] for r in rows)
    kinds = ("clean error", "worked", "traceback", "silent wrong", "half-written", "data lost", "code executed",
             "unexpected refusal", "bench error")
    summary = ", ".join(f"{counts[k]} {k}" for k in kinds if counts[k])
    lines = [f"{len(rows)} bad inputs and faults: {summary}.", "",
             "| group | case | outcome | message or check |", "|---|---|---|---|"]
    lines += [f"| {g} | {n} | {o} | {t} |" for g, n, o, t in rows]
    text = "\n".join(lines) + "\n"
    Path(args.out).write_text(text)
    print("\n" + lines[0])


if __name__ == "__main__":
    main()
