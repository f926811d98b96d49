"""Both bundles, exported with ``monai-moe-reg zoo-export``, pass the Model Zoo's CI checks offline.

The zoo's ``ci/verify_bundle.py`` (full mode) and ``ci/unit_tests/runner.py`` are replayed with the MONAI functions
they call: required files, ``large_files.yml``, metadata against the vendored ``meta_schema_20240725.json``,
``verify_net_in_out``, ``ckpt_export`` (``torch.jit.script``) with the TorchScript file loaded and run at another
size, and our zoo unit-test files (``monai_moe_reg/zoo_tests``) run with unittest in a fresh process from a zoo-like
folder, importing the package the bundle carries. Tiny networks (the unit-test files' overrides); LLM-Morph uses a
tiny GGUF placed where ``large_files.yml`` would put SmolLM2. ``.ci/zoo-check`` runs the zoo's own scripts.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser, ckpt_export, verify_metadata, verify_net_in_out

from monai_moe_reg.bundles import bundle_config
from monai_moe_reg.llm import SMOLLM2
from monai_moe_reg.zoo import ZOO_FILE_LIMIT, export_zoo_bundle, zoo_state_dict

from .llm_fixtures import write_tiny_gguf

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = Path(__file__).parent / "data" / "meta_schema_20240725.json"
NETWORK_KEYS = ("network_def", "llm_layers")


def unit_test_module(bundle: str):
    path = ROOT / "monai_moe_reg" / "zoo_tests" / f"test_{bundle}.py"
    spec = importlib.util.spec_from_file_location(f"zoo_test_{bundle}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return path, module


@pytest.mark.parametrize("bundle", ["shmoareg", "llm_morph"])
def test_exported_bundle_passes_zoo_checks(bundle, tmp_path):
    zoo = tmp_path / "zoo"
    out = zoo / "models" / bundle
    test_file, module = unit_test_module(bundle)
    network = {k: v for k, v in module.TINY.items() if k.startswith(NETWORK_KEYS)}
    if bundle == "llm_morph":  # where large_files.yml puts SmolLM2 (its GGUF is used once extracted)
        llm = tmp_path / SMOLLM2["file"]
        write_tiny_gguf(llm, num_layers=4)
        network["llm"] = str(llm)
    parser = bundle_config(ROOT / "bundles" / bundle)
    for k, v in network.items():
        parser[k] = v
    ckpt = tmp_path / "trained.pt"
    torch.save(parser.get_parsed_content("network_def").state_dict(), ckpt)

    assert export_zoo_bundle(bundle, out, ckpt, overrides=network) == out
    with pytest.raises(FileExistsError, match="--force"):
        export_zoo_bundle(bundle, out, ckpt, overrides=network)
    # --force replaces an earlier export only after every input checked out, and never other files
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pt"):
        export_zoo_bundle(bundle, out, tmp_path / "bad.pt", overrides=network, force=True)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"did not write \(notes.txt\)"):
        export_zoo_bundle(bundle, out, ckpt, overrides=network, force=True)
    (out / "notes.txt").unlink()
    assert export_zoo_bundle(bundle, out, ckpt, overrides=network, force=True) == out
    with pytest.raises(ValueError, match="is the bundle"):
        export_zoo_bundle(out, out, ckpt, overrides=network, force=True)
    assert (out / "configs" / "metadata.json").is_file()
    if bundle == "llm_morph":
        (out / "models" / SMOLLM2["file"]).write_bytes(llm.read_bytes())
        network.pop("llm")  # from here on the bundle's own configs find it (monai_moe_reg.llm.bundle_llm)

    # verify_bundle_directory / verify_version_changes / verify_metadata_format
    for f in ("LICENSE", "configs/metadata.json", "configs/inference.json", "models/model.pt", "docs/README.md"):
        assert (out / f).is_file(), f
    assert (out / "models" / "model.pt").stat().st_size <= ZOO_FILE_LIMIT
    large = ConfigParser.load_config_file(str(out / "large_files.yml"))["large_files"]
    for entry in large:
        assert {"path", "url", "hash_val", "hash_type"} <= set(entry) and entry["path"].startswith("models/")
    meta = json.loads((out / "configs" / "metadata.json").read_text())
    assert meta["version"] in meta["changelog"]
    assert "monai-moe-reg" not in meta["required_packages_version"]
    assert {"transformers", "peft", "pytorch-ignite", "nibabel"} <= set(meta["required_packages_version"])
    assert all(isinstance(v, (int, float)) for v in meta["eval_metrics"].values()), "eval_metrics holds scores"
    verify_metadata(meta_file=str(out / "configs" / "metadata.json"), filepath=str(SCHEMA))

    # verify_data_shape and verify_torchscript, as the zoo calls them (torch.jit.script, not tracing)
    sys.path.insert(0, str(out))
    try:
        kwargs = {
            "meta_file": str(out / "configs" / "metadata.json"),
            "config_file": str(out / "configs" / "inference.json"),
            "bundle_root": str(out),
        }
        verify_net_in_out(net_id="network_def", device="cpu", **kwargs, **network)
        ckpt_export(
            net_id="network_def",
            filepath=str(out / "models" / "verify_model.ts"),
            ckpt_file=str(out / "models" / "model.pt"),
            **kwargs,
            **network,
        )
    finally:
        sys.path.remove(str(out))
    ts = torch.jit.load(str(out / "models" / "verify_model.ts"))
    with torch.no_grad():
        assert ts(torch.rand(1, 2, 40, 48, 36)).shape == (1, 3, 40, 48, 36)

    # the zoo's unit-test runner: our test file from the zoo folder, in a process that imports the bundle's package
    env = {**os.environ, "PYTHONPATH": str(test_file.parent)}
    proc = subprocess.run(
        [sys.executable, "-m", "unittest", "-v", f"test_{bundle}"],
        cwd=zoo,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    where = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; sys.path.insert(0, sys.argv[1]); import monai_moe_reg;" "print(monai_moe_reg.__file__)",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert Path(where.stdout.strip()).is_relative_to(out), where.stdout


def test_zoo_state_dict_half_precision_and_limit():
    net = torch.nn.Linear(1000, 2000)  # 2 M parameters: 8 MB in single precision
    full = zoo_state_dict(net, limit=16 * 2**20)
    assert full["weight"].dtype == torch.float32
    half = zoo_state_dict(net, limit=5 * 2**20)
    assert half["weight"].dtype == torch.float16
    with pytest.raises(ValueError, match=r"3\.8 MB even in half precision.*large_files.yml"):
        zoo_state_dict(net, limit=2**20)


def test_ship_weights_lists_the_hash_and_the_zoo_export_carries_the_file(tmp_path):
    import shutil

    from monai_moe_reg.weights import default_weights, expected_hash, load_network_weights
    from monai_moe_reg.zoo import ship_weights

    bundle = tmp_path / "shmoareg"
    shutil.copytree(
        ROOT / "bundles" / "shmoareg", bundle, ignore=shutil.ignore_patterns("data", "eval", "models", "cache")
    )
    _, module = unit_test_module("shmoareg")
    network = {k: v for k, v in module.TINY.items() if k.startswith(NETWORK_KEYS)}
    parser = bundle_config(bundle)
    for k, v in network.items():
        parser[k] = v
    net = parser.get_parsed_content("network_def")
    (bundle / "models").mkdir()
    torch.save(net.state_dict(), tmp_path / "trained.pt")
    shipped = ship_weights(bundle, tmp_path / "trained.pt", overrides=network)
    assert shipped == bundle / "models" / "pretrained.safetensors"
    kind, digest = expected_hash(shipped)
    assert kind == "sha256" and len(digest) == 64
    assert "# Files too large" in (bundle / "large_files.yml").read_text(), "the header comments are kept"
    assert default_weights(bundle) == str(shipped)
    load_network_weights(parser.get_parsed_content("network_def", lazy=False), shipped)
    out = export_zoo_bundle(bundle, tmp_path / "zoo" / "shmoareg", shipped, overrides=network)
    # the export's model.pt holds the shipped weights; the shipped file itself is not copied (the same weights twice)
    assert not (out / "models" / "pretrained.safetensors").exists()
    assert "pretrained.safetensors" not in (out / "large_files.yml").read_text()
    from safetensors.torch import load_file

    exported, ours = torch.load(out / "models" / "model.pt", weights_only=True), load_file(str(shipped))
    assert exported.keys() == ours.keys() and all(torch.equal(exported[k], ours[k].to(exported[k].dtype)) for k in ours)


def test_zoo_pull_request_layout_weights_by_url_and_precommit(tmp_path):
    """``--weights-url``: no weights file is committed (the zoo's pre-commit refuses files over 1 MB), model.pt
    is listed in large_files.yml and downloads from the URL with its hash, as the zoo's verify_bundle.py does (here
    from a loopback HTTP server); the zoo's pre-commit hooks leave the export unchanged; the unit test lands in the
    checkout's ci/unit_tests; the pins are ones the zoo's Python 3.10 runner can install."""
    import functools
    import http.server
    import threading

    from monai.apps.utils import download_url
    from pre_commit_hooks import end_of_file_fixer, pretty_format_json, trailing_whitespace_fixer

    from monai_moe_reg.zoo import PY310_NEWEST, _version_key

    zoo = tmp_path / "model-zoo"
    (zoo / "ci" / "unit_tests").mkdir(parents=True)
    out, upload = zoo / "models" / "shmoareg", tmp_path / "upload"
    _, module = unit_test_module("shmoareg")
    network = {k: v for k, v in module.TINY.items() if k.startswith(NETWORK_KEYS)}
    parser = bundle_config(ROOT / "bundles" / "shmoareg")
    for k, v in network.items():
        parser[k] = v
    ckpt = tmp_path / "trained.pt"
    torch.save(parser.get_parsed_content("network_def").state_dict(), ckpt)

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(upload))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/model.pt"
        with pytest.raises(ValueError, match="weights-url must be"):
            export_zoo_bundle("shmoareg", out, ckpt, overrides=network, weights_url="model.pt")
        export_zoo_bundle("shmoareg", out, ckpt, overrides=network, weights_url=url, weights_dir=upload)
        files = [p for p in out.rglob("*") if p.is_file()]
        assert not (out / "models" / "model.pt").exists() and (upload / "model.pt").is_file()
        assert max(p.stat().st_size for p in files) <= 1024 * 1024, max(files, key=lambda p: p.stat().st_size)
        entries = ConfigParser.load_config_file(str(out / "large_files.yml"))["large_files"]
        (entry,) = [e for e in entries if e["path"] == "models/model.pt"]
        assert entry["url"] == url and entry["hash_type"] == "sha256" and len(entry["hash_val"]) == 64
        # what the zoo's ci/utils.py download_large_files does
        download_url(url=entry["url"], filepath=str(out / entry["path"]), hash_val=entry["hash_val"],
                     hash_type=entry["hash_type"], fuzzy=True)
        assert (out / "models" / "model.pt").read_bytes() == (upload / "model.pt").read_bytes()
        (out / "models" / "model.pt").unlink()
    finally:
        server.shutdown()

    texts = [str(p) for p in files if p.suffix in (".py", ".json", ".md", ".yml", ".txt", ".conf") or p.name == "LICENSE"]
    assert pretty_format_json.main(["--no-sort-keys", "--indent=4", *[t for t in texts if t.endswith(".json")]]) == 0
    assert end_of_file_fixer.main(texts) == 0 and trailing_whitespace_fixer.main(texts) == 0
    test = zoo / "ci" / "unit_tests" / "test_shmoareg.py"
    assert test.is_file() and '"models/shmoareg"' in test.read_text()

    meta = json.loads((out / "configs" / "metadata.json").read_text())
    pins = {**meta["required_packages_version"], "numpy": meta["numpy_version"]}
    for name, newest in PY310_NEWEST.items():
        if name in pins:
            assert _version_key(pins[name]) <= _version_key(newest), (name, pins[name])


HIDE_INSTALLED = '''
import site, sys
from importlib.machinery import PathFinder

class HideInstalled:  # monai_moe_reg only from sys.path entries outside site-packages: a machine without it
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name != "monai_moe_reg":
            return None
        blocked = set(site.getsitepackages() + [site.getusersitepackages()])
        spec = PathFinder.find_spec(name, [p for p in sys.path if p not in blocked])
        if spec is None:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return spec

sys.meta_path.insert(0, HideInstalled)
'''


def _tree(folder: Path) -> dict:
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
        if "__pycache__" not in p.parts
    }


def test_exported_bundle_runs_from_another_folder_and_writes_nothing_into_it(tmp_path):
    """Issue 21: on a machine without monai-moe-reg installed, from another folder, ``python -m monai.bundle run
    --config_file B/configs/inference.json --bundle_root B`` and ``monai.bundle.load(name, bundle_dir)`` use the
    package the export carries, and nothing is written inside the bundle (outputs go to the work folder)."""
    from monai_moe_reg.trust import check_bundle_code

    ckpt = tmp_path / "trained.pt"
    torch.save(bundle_config(ROOT / "bundles" / "shmoareg").get_parsed_content("network_def").state_dict(), ckpt)
    bundle = export_zoo_bundle("shmoareg", tmp_path / "downloads" / "shmoareg", ckpt)
    check_bundle_code(bundle / "configs" / "inference.json")  # the installed package trusts an export's configs
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(HIDE_INSTALLED)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    work = tmp_path / "work"
    env = {**os.environ, "PYTHONPATH": str(hide), "MONAI_MOE_REG_WORK_DIR": str(work)}
    before = _tree(bundle)

    def python(*args):
        proc = subprocess.run(
            [sys.executable, *args], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout

    assert "No module named 'monai_moe_reg'" in subprocess.run(
        [sys.executable, "-c", "import monai_moe_reg"], cwd=elsewhere, env=env, capture_output=True, text=True
    ).stderr
    config = str(bundle / "configs" / "inference.json")
    python("-m", "monai.bundle", "run", "--config_file", config, "--bundle_root", str(bundle))
    outputs = work / "shmoareg" / "eval" / "inference"
    assert (outputs / "inference_metrics.csv").is_file() and (work / "shmoareg" / "data" / "datalist.json").is_file()
    printed = python(
        "-c",
        "import sys, torch, monai; "
        "net = monai.bundle.load(name='shmoareg', bundle_dir=sys.argv[1], source='github'); "
        "print(type(net).__name__, tuple(net.eval()(torch.zeros(1, 2, 32, 32, 32)).shape), "
        "sys.modules['monai_moe_reg'].__file__)",
        str(bundle.parent),
    )
    assert printed.strip().splitlines()[-1].startswith("SHMoAReg (1, 3, 32, 32, 32) " + str(bundle)), printed
    assert _tree(bundle) == before, "a run wrote into the bundle"


def test_vendored_config_refuses_an_import_it_cannot_rewrite():
    from monai_moe_reg.vendoring import vendored_config

    with pytest.raises(ValueError, match=r"cannot vendor the import .*from monai_moe_reg.*use '\$import monai_moe_reg"):
        vendored_config({"imports": ["$from monai_moe_reg.bundles import bundle_dir"]})
    out = vendored_config({"imports": ["$import monai_moe_reg.data"], "x": "$monai_moe_reg.data.f('monai_moe_reg.y')"})
    assert out["x"] == "$@package.data.f('monai_moe_reg.y')"  # code rewritten, quoted text left as it is
