"""Drive both bundles like the Model Zoo's unit tests: ConfigWorkflow with overrides for a tiny run."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigWorkflow, ckpt_export, verify_net_in_out


ROOT = Path(__file__).resolve().parents[1]
BUNDLES = ("shmoareg", "llm_morph")
REQUIRED_META = (
    "schema", "version", "monai_version", "pytorch_version", "numpy_version", "required_packages_version", "task",
    "description", "authors", "copyright", "network_data_format", "changelog",
)
TENSOR_FIELDS = ("type", "format", "num_channels", "spatial_shape", "dtype", "value_range")
ZOO_FILES = (
    "LICENSE", "configs/metadata.json", "configs/train.json", "configs/evaluate.json", "configs/inference.json",
    "configs/multi_gpu_train.json", "configs/logging.conf", "docs/README.md", "docs/data_license.txt",
)


@pytest.fixture(scope="module")
def tiny_llm(llama_dir):
    return llama_dir


def tiny_overrides(bundle: str, work: Path, tiny_llm: Path) -> dict:
    common = {
        "bundle_root": str(ROOT / "bundles" / bundle),
        "dataset_dir": str(work / "data"),
        "ckpt_dir": str(work / "models"),
        "output_dir": str(work / "eval"),
        "demo_size": 32,
    }
    if bundle == "shmoareg":
        net = {"network_def#depths": [1, 1], "network_def#num_heads": [2, 2], "network_def#embed_dim": 12,
               "network_def#conv_channels": [8, 8], "network_def#decoder_channels": [8, 8, 16, 16]}
    else:
        net = {"llm": str(tiny_llm), "llm_layers": [2, 5], "network_def#lora_rank": 4,
               "network_def#encoder_channels": [8, 8, 16, 16, 16], "network_def#decoder_channels": [8, 8, 16, 16, 16],
               "network_def#adapter_channels": 64}
    return {**common, **net}


def workflow(bundle: str, config, workflow_type: str, **override) -> ConfigWorkflow:
    configs = [str(ROOT / "bundles" / bundle / "configs" / c) for c in ([config] if isinstance(config, str) else config)]
    meta = str(ROOT / "bundles" / bundle / "configs" / "metadata.json")
    return ConfigWorkflow(config_file=configs if len(configs) > 1 else configs[0], meta_file=meta,
                          workflow_type=workflow_type, **override)


@pytest.mark.parametrize("bundle", BUNDLES)
def test_layout_and_metadata(bundle):
    root = ROOT / "bundles" / bundle
    for f in ZOO_FILES:
        assert (root / f).is_file(), f"{bundle} lacks {f}"
    tracked = subprocess.run(["git", "ls-files", str(root)], capture_output=True, text=True, cwd=ROOT).stdout.split()
    if tracked:  # in a git checkout: only the shipped weights, hash-listed in large_files.yml; no file over 25 MB
        from monai_moe_reg.weights import expected_hash

        weights = [f for f in tracked if f.endswith((".pt", ".ts", ".pth", ".safetensors", ".gguf"))]
        assert all(f.endswith(".safetensors") and expected_hash(ROOT / f) for f in weights), weights
        assert all((ROOT / f).stat().st_size < 25 * 2**20 for f in tracked)
    meta = json.loads((root / "configs" / "metadata.json").read_text())
    for key in REQUIRED_META:
        assert key in meta, f"metadata.json lacks {key}"
    assert meta["version"] in meta["changelog"]
    for section in ("inputs", "outputs"):
        for name, tensor in meta["network_data_format"][section].items():
            for field in TENSOR_FIELDS:
                assert field in tensor, f"{section}.{name} lacks {field}"
    assert meta["network_data_format"]["inputs"]["image"]["num_channels"] == 2
    assert meta["network_data_format"]["outputs"]["pred"]["num_channels"] == 3


@pytest.mark.parametrize("bundle", BUNDLES)
def test_check_properties(bundle, tmp_path, tiny_llm):
    ov = tiny_overrides(bundle, tmp_path, tiny_llm)
    for config, kind in (("train.json", "train"), ("inference.json", "infer")):
        extra = {"network_mode": "off"} if kind == "infer" else {}  # the tiny network does not fit the shipped weights
        wf = workflow(bundle, config, kind, **ov, **extra)
        wf.initialize()
        assert not wf.check_properties(), f"{config}: missing properties {wf.check_properties()}"


@pytest.mark.parametrize("bundle", BUNDLES)
def test_train_resume_evaluate_infer(bundle, tmp_path, tiny_llm):
    ov = tiny_overrides(bundle, tmp_path, tiny_llm)
    train = workflow(bundle, "train.json", "train", max_epochs=1, val_interval=1, **ov)
    train.initialize()
    train.run()
    train.finalize()
    models = tmp_path / "models"
    assert (models / "model.pt").is_file() and list(models.glob("checkpoint*.pt"))
    best = json.loads((models / "model.pt.json").read_text())["value"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for events in (tmp_path / "eval").glob("events.out.tfevents*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    assert {"loss", "reg"} <= tags and len(tags - {"loss", "reg"}) > 5, tags  # the training loss and its terms
    val_csv = (tmp_path / "eval" / "val_metrics.csv").read_text().splitlines()
    assert val_csv[0] == "pair,dice,hd95_mm,assd_mm,folding_percent,sdlogj" and len(val_csv) == 3

    # a run "killed" after epoch 1 resumes at epoch 2 with the saved optimizer state and epoch
    resumed = workflow(bundle, "train.json", "train", max_epochs=2, val_interval=1, resume=True, **ov)
    resumed.initialize()
    epochs = []
    resumed.trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: epochs.append(e.state.epoch))
    resumed.run()
    resumed.finalize()
    assert epochs == [2]
    assert json.loads((models / "model.pt.json").read_text())["value"] >= best  # never replaced by worse weights
    # the resumed run equals an uninterrupted one (random generators restored with the checkpoint)
    straight_ov = {**ov, "ckpt_dir": str(tmp_path / "straight" / "models"), "output_dir": str(tmp_path / "straight")}
    straight = workflow(bundle, "train.json", "train", max_epochs=2, val_interval=1, **straight_ov)
    straight.initialize()
    straight.run()
    a, b = resumed.trainer.network.state_dict(), straight.trainer.network.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed run differs from the uninterrupted one"

    evaluate = workflow(bundle, ["train.json", "evaluate.json"], "eval", **ov)
    evaluate.initialize()
    evaluate.run()
    rows = (tmp_path / "eval" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3 and (tmp_path / "eval" / "metrics_summary.csv").is_file()

    # the trained network in the bundle's whole pipeline, every optional file asked for
    infer = workflow(bundle, "inference.json", "infer",
                     **{**ov, "output_dir": str(tmp_path / "inference"), "network_mode": "on", "extras": "all"})
    infer.initialize()
    infer.run()
    datalist = json.loads((tmp_path / "data" / "datalist.json").read_text())
    entry = datalist["testing"][0]
    fixed = nib.load(str(tmp_path / "data" / entry["fixed_image"]))
    name = Path(entry["moving_image"]).name.replace(".nii.gz", "") + "_to_" + Path(entry["fixed_image"]).name.replace(
        ".nii.gz", ""
    )
    out = tmp_path / "inference" / name
    expected = {"warped_image", "warped_label", "ddf", "ddf_itk", "jacobian"}
    if bundle == "shmoareg":
        expected |= {"expert_map_x", "expert_map_y", "expert_map_z"}
    assert {p.name.replace(".nii.gz", "") for p in out.glob("*.nii.gz")} == expected
    assert (out / "overview.png").stat().st_size > 1000 and (out / "transform.h5").is_file()
    for key in ("warped_image", "warped_label", "jacobian"):
        img = nib.load(str(out / f"{key}.nii.gz"))
        assert img.shape == fixed.shape and np.allclose(img.affine, fixed.affine), key
    assert nib.load(str(out / "ddf.nii.gz")).shape == (*fixed.shape, 3)
    assert not list((tmp_path / "inference").glob(".*.part"))


@pytest.mark.parametrize("bundle", BUNDLES)
def test_verify_net_in_out_and_traced_export(bundle, tmp_path, tiny_llm):
    ov = tiny_overrides(bundle, tmp_path, tiny_llm)
    configs = str(ROOT / "bundles" / bundle / "configs" / "inference.json")
    meta = str(ROOT / "bundles" / bundle / "configs" / "metadata.json")
    verify_net_in_out(net_id="network_def", meta_file=meta, config_file=configs, n=1, device="cpu", **ov)

    wf = workflow(bundle, "inference.json", "infer", **ov)
    net = wf.parser.get_parsed_content("network_def").eval()
    ckpt = tmp_path / "model.pt"
    torch.save(net.state_dict(), ckpt)
    ts = tmp_path / "model.ts"
    ckpt_export(net_id="network_def", filepath=str(ts), ckpt_file=str(ckpt), meta_file=meta, config_file=configs,
                use_trace=True, input_shape=[1, 2, 32, 32, 32], **ov)
    traced = torch.jit.load(str(ts))
    x = torch.rand(1, 2, 32, 32, 32)
    with torch.no_grad():
        assert torch.allclose(traced(x), net(x), atol=1e-4)


def _write(path: Path, shape, affine=np.eye(4)) -> str:
    nib.save(nib.Nifti1Image(np.random.rand(*shape).astype(np.float32), affine), str(path))
    return str(path)


@pytest.mark.parametrize("case", ["missing", "dims", "label_shape", "no_val_labels", "empty_training", "truncated"])
def test_bad_datalists_fail_before_training(case, tmp_path, tiny_llm):
    data = tmp_path / "data"
    data.mkdir()
    entry = {"moving_image": _write(data / "m.nii.gz", (32, 32, 32)), "fixed_image": _write(data / "f.nii.gz", (32, 32, 32))}
    if case == "missing":
        entry["moving_image"] = str(data / "nowhere.nii.gz")
        error, match = FileNotFoundError, r"training\[0\].*nowhere.nii.gz"
    elif case == "dims":
        entry["fixed_image"] = _write(data / "f2d.nii.gz", (32, 32))
        error, match = ValueError, r"training\[0\].*3-D.*2-D"
    elif case == "label_shape":
        entry["moving_label"] = _write(data / "ml.nii.gz", (32, 32, 30))
        entry["fixed_label"] = _write(data / "fl.nii.gz", (32, 32, 32))
        error, match = ValueError, r"training\[0\].*moving_label shape"
    sections = {"training": [entry], "validation": [entry]}
    if case in ("no_val_labels", "empty_training", "truncated"):
        labelled = {**entry, "moving_label": _write(data / "ml.nii.gz", (32, 32, 32)),
                    "fixed_label": _write(data / "fl.nii.gz", (32, 32, 32))}
        sections = {"training": [labelled], "validation": [labelled]}
        if case == "no_val_labels":
            sections["validation"] = [entry]
            error, match = ValueError, r"validation\[0\].*no moving_label/fixed_label"
        elif case == "empty_training":
            sections["training"] = []
            error, match = ValueError, r"section 'training' .* is empty"
        else:
            error, match = ValueError, r"datalist.json' is not valid JSON"
    text = json.dumps(sections)
    (data / "datalist.json").write_text(text[: len(text) // 2] if case == "truncated" else text)
    ov = tiny_overrides("shmoareg", tmp_path, tiny_llm)
    wf = workflow("shmoareg", "train.json", "train", max_epochs=1, **ov)
    started = []
    with pytest.raises(Exception) as info:  # raised while the workflow builds its datasets, before any epoch
        wf.initialize()
        wf.trainer.add_event_handler(Events.STARTED, lambda e: started.append(1))
        wf.run()
    cause = info.value
    while cause is not None and not isinstance(cause, error):
        cause = cause.__cause__ or cause.__context__
    assert cause is not None and __import__("re").search(match, str(cause)), str(info.value)
    assert not started


def test_llm_morph_bundle_without_smollm2_names_the_fetch_command(tmp_path, tiny_llm):
    ov = tiny_overrides("llm_morph", tmp_path, tiny_llm)
    ov["llm"] = str(tmp_path / "missing" / "SmolLM2-135M-Instruct.Q4_1.gguf")
    wf = workflow("llm_morph", "train.json", "train", **ov)
    with pytest.raises(Exception) as info:
        wf.initialize()
    assert "python -m monai_moe_reg.llm.fetch" in str(info.value) + str(info.value.__cause__)


@pytest.mark.parametrize("bundle", BUNDLES)
def test_multi_gpu_config_with_two_cpu_processes(bundle, tmp_path, tiny_llm):
    ov = tiny_overrides(bundle, tmp_path, tiny_llm)
    configs = [str(ROOT / "bundles" / bundle / "configs" / c) for c in ("train.json", "multi_gpu_train.json")]
    args = []
    for k, v in {**ov, "max_epochs": 1, "val_interval": 1}.items():
        args += [f"--{k}", json.dumps(v) if not isinstance(v, str) else v]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533", "-m",
           "monai.bundle", "run", "--config_file", json.dumps(configs), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (tmp_path / "models" / "model.pt").is_file()


def test_amp_training_on_cpu(tmp_path, tiny_llm):
    """--amp true trains with bf16 autocast on CPU (fp16 + gradient scaler on CUDA)."""
    ov = tiny_overrides("shmoareg", tmp_path, tiny_llm)
    wf = workflow("shmoareg", "train.json", "train", max_epochs=1, val_interval=1, amp=True, **ov)
    wf.initialize()
    wf.run()
    assert wf.trainer.use_amp and np.isfinite(float(wf.trainer.state.output["loss"]))
    assert (tmp_path / "models" / "model.pt").is_file()


def test_training_draws_random_pairs_from_cached_subjects(tmp_path, tiny_llm):
    from monai_moe_reg.data import CachedPairs, synthetic_pair

    data = tmp_path / "data"
    data.mkdir()
    subjects = []
    for i in range(4):
        pair = synthetic_pair((32, 32, 32), seed=i)
        img, lab = data / f"s{i}.nii.gz", data / f"s{i}_seg.nii.gz"
        nib.save(nib.Nifti1Image(pair["fixed_image"][0].numpy(), np.eye(4)), str(img))
        nib.save(nib.Nifti1Image(pair["fixed_label"][0].numpy().astype(np.uint8), np.eye(4)), str(lab))
        subjects.append({"image": img.name, "label": lab.name})
    val = [{"moving_image": "s0.nii.gz", "fixed_image": "s1.nii.gz", "moving_label": "s0_seg.nii.gz",
            "fixed_label": "s1_seg.nii.gz"}]
    (data / "datalist.json").write_text(json.dumps({"training": {"subjects": subjects}, "validation": val}))
    ov = tiny_overrides("shmoareg", tmp_path, tiny_llm)
    wf = workflow("shmoareg", "train.json", "train", max_epochs=1, val_interval=1, epoch_length=3, num_workers=1, **ov)
    wf.initialize()
    assert isinstance(wf.trainer.data_loader.dataset, CachedPairs) and len(wf.trainer.data_loader.dataset) == 12
    wf.run()
    assert wf.trainer.state.epoch_length == 3 and wf.trainer.state.iteration == 3
    assert (tmp_path / "models" / "model.pt").is_file()


@pytest.mark.parametrize("bundle, recipe, expected", [
    ("shmoareg", "oasis", {"spatial_size": [128, 128, 128], "loss#lambda_reg": 0.01, "epoch_length": 1000}),
    ("shmoareg", "btcv", {"moving_intensity": "ct", "loss#lambda_reg": 0.1, "max_epochs": 100}),
    ("llm_morph", "abdomenmrct", {"network_def#half_resolution": True, "num_classes": 5, "fixed_intensity": "ct",
                                  "network_def#adapter_channels": 256}),  # the paper's C4 (the shipped default: 128)
    ("llm_morph", "srreg", {"num_classes": 61, "max_epochs": 300, "amp": True, "network_def#adapter_channels": 256}),
])
def test_paper_recipes_merge_with_train_json(bundle, recipe, expected):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    root = ROOT / "bundles" / bundle / "configs"
    parser.read_config([str(root / "train.json"), str(root / "recipes" / f"{recipe}.json")])
    for key, value in expected.items():
        assert parser[key] == value, key
    assert parser["train#dataset"].startswith("$monai_moe_reg.data.training_pairs")


@pytest.mark.parametrize("override, message", [
    ({"max_epochs": 0}, "max_epochs must be a whole number of at least 1, got 0"),
    ({"val_interval": 0}, "val_interval must be a whole number of at least 1, got 0"),
    ({"epoch_length": 0}, "epoch_length must be a whole number of at least 1 .or null"),
    ({"cache": "disk", "cache_dir": "/proc/no_such_cache"}, "cache 'disk': cannot create cache_dir"),
    ({"cache": "ram"}, "cache must be one of"),
    ({"device": "cuda:abc"}, "device 'cuda:abc' is not a device name"),
])
def test_bad_training_overrides_are_named_before_anything_is_built(override, message, tmp_path):
    """train.json checks the settings users override on the command line first: one error naming the setting,
    before any network, dataset or cache is built."""
    from monai.bundle import ConfigWorkflow

    wf = ConfigWorkflow(config_file=str(ROOT / "bundles" / "shmoareg" / "configs" / "train.json"), workflow_type="train",
                        bundle_root=str(ROOT / "bundles" / "shmoareg"), dataset_dir=str(tmp_path / "data"),
                        ckpt_dir=str(tmp_path / "models"), output_dir=str(tmp_path / "eval"), **override)
    with pytest.raises(Exception) as err:
        wf.initialize()
    chain, e = [], err.value
    while e is not None:
        chain.append(str(e))
        e = e.__cause__
    assert any(re.search(message, c) for c in chain), chain
    assert not (tmp_path / "data").exists() and not (tmp_path / "models").exists()


def test_an_interrupted_training_ends_with_one_line_and_resumes(tmp_path):
    """SIGTERM (a scheduler) during `python -m monai.bundle run` training: exit 130, one line naming where it stopped,
    no traceback; the checkpoints left load, so --resume true can continue."""
    import signal
    import time

    ov = tiny_overrides("shmoareg", tmp_path, None)
    args = [sys.executable, "-m", "monai.bundle", "run", "--config_file",
            str(ROOT / "bundles" / "shmoareg" / "configs" / "train.json"), "--max_epochs", "100000", "--val_interval", "1",
            "--epoch_length", "2"]
    for k, v in ov.items():
        args += [f"--{k}", json.dumps(v) if not isinstance(v, str) else v]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "Epoch[2]" in line or "Epoch: 2/" in line:
            break
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    try:  # (the run cannot end by itself first: the pipe may hold many epochs of output not read yet)
        rest, _ = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    out = "".join(lines) + rest
    assert proc.returncode == 130, out[-2000:]
    assert "Traceback" not in out, out[-2000:]
    assert re.search(r"(training|validation) interrupted at epoch \d+", out), out[-2000:]
    for ckpt in (tmp_path / "models").glob("*.pt"):
        torch.load(ckpt, map_location="cpu", weights_only=False)
