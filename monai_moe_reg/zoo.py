"""Model Zoo export: a self-contained copy of a bundle that the model-zoo repository's CI scripts accept.

The bundles in this repository import ``monai_moe_reg``; the zoo installs a bundle's requirements from PyPI
(``required_packages_version``), where this package is not. :func:`export_zoo_bundle` therefore writes a bundle folder
that carries the package itself (``<bundle>/monai_moe_reg``, imported from there by the rewritten configs of
:func:`monai_moe_reg.vendoring.vendored_config`, from any folder and by ``monai.bundle.load``), lists the package's own
dependencies with the installed versions instead of ``monai-moe-reg``, and holds ``models/model.pt``: the trainable
weights only (LLM-Morph's frozen LLM layers come from the LLM file its ``large_files.yml`` downloads), in half precision
when single precision would exceed the zoo's 25 MB per file.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
from pathlib import Path

import torch
from monai_moe_reg.vendoring import vendored_config

__all__ = [
    "ZOO_FILE_LIMIT",
    "bundle_test_case",
    "export_zoo_bundle",
    "run_bundle_workflows",
    "ship_weights",
    "upload_dir",
    "zoo_requirements",
    "zoo_state_dict",
]

ZOO_FILE_LIMIT = 25 * 2**20  # the model zoo's limit per committed file (bytes)
_COPIED = ("LICENSE", "configs", "docs", "large_files.yml")
_BASE = {"torch", "monai", "numpy"}  # the zoo pins these from pytorch_version / monai_version / numpy_version


# The Model Zoo's premerge runs on Python 3.10 (premerge-cpu.yml: 3.10.14) and pins every listed package with ==.
# For the dependencies whose installed release has no CPython 3.10 build, the newest release that has one (PyPI,
# `pip download --python-version 3.10 --only-binary=:all:`, 2026-12-02); the export pins min(installed, this).
ZOO_PYTHON = "3.10"
PY310_NEWEST = {"numpy": "2.2.6", "scipy": "1.15.3", "matplotlib": "3.10.9", "transformers": "5.20.2"}


def _version_key(version: str) -> tuple:
    return tuple(int(p) if p.isdigit() else 0 for p in re.split(r"[.+]", version)[:4])


def zoo_version(name: str, version: str) -> str:
    """``version`` of ``name``, or the newest release with a Python 3.10 build when ``version`` has none
    (:data:`PY310_NEWEST`)."""
    cap = PY310_NEWEST.get(name.lower())
    return cap if cap is not None and _version_key(version) > _version_key(cap) else version


def zoo_requirements(package: str = "monai-moe-reg") -> dict[str, str]:
    """``{distribution: version}`` for ``package``'s runtime dependencies (no extras, no torch/monai/numpy): the
    installed version, or the newest one the zoo's Python 3.10 runner can install (:func:`zoo_version`); the
    ``required_packages_version`` an exported bundle needs once the package itself travels inside it."""
    reqs = {}
    for line in importlib.metadata.requires(package) or []:
        if ";" in line:  # extras ("pytest; extra == 'test'") are not runtime dependencies
            continue
        name = re.split(r"[<>=!~ \[]", line, maxsplit=1)[0].strip()
        if name.lower() not in _BASE:
            reqs[name] = zoo_version(name, importlib.metadata.version(name))
    return reqs


def zoo_json(obj) -> str:
    """JSON as the zoo's pre-commit ``pretty-format-json --no-sort-keys --indent=4`` writes it (ASCII, final
    newline), so that the hook leaves an exported config unchanged."""
    return json.dumps(obj, indent=4, ensure_ascii=True) + "\n"


def _large_files_yml(entries: list[dict]) -> str:
    lines = [
        "# Files the Model Zoo's CI (and monai.bundle download) fetch into the bundle, checked by their hash.",
        "large_files:" if entries else "large_files: []",
    ]
    for e in entries:
        lines.append(f'  - path: "{e["path"]}"')
        for key in ("url", "hash_val", "hash_type"):
            if key in e:
                lines.append(f'    {key}: "{e[key]}"')
    return "\n".join(lines) + "\n"


def zoo_state_dict(network: torch.nn.Module, limit: int = ZOO_FILE_LIMIT) -> dict[str, torch.Tensor]:
    """The network's ``state_dict`` (LLM-Morph's excludes its frozen LLM weights) in single precision, or half
    precision when single precision would exceed ``limit`` bytes; a ``ValueError`` with the size when even half
    precision does not fit."""
    state = {k: v.detach().cpu() for k, v in network.state_dict().items()}
    nbytes = sum(v.numel() * v.element_size() for v in state.values())
    if nbytes > limit:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
        nbytes = sum(v.numel() * v.element_size() for v in state.values())
    if nbytes > limit:
        raise ValueError(
            f"the network's weights take {nbytes / 2**20:.1f} MB even in half precision, over the Model Zoo's "
            f"{limit / 2**20:.0f} MB per file: use a smaller configuration or host the file and list it in "
            "large_files.yml."
        )
    return state


def _trained_state(src: Path, checkpoint: str | os.PathLike, overrides: dict | None) -> tuple[dict, dict]:
    """``checkpoint`` loaded into the bundle's ``network_def`` (built with ``overrides``; weights that do not fit are
    refused), returned as :func:`zoo_state_dict` with the network's recorded settings (:func:`network_config`)."""
    from monai_moe_reg.bundles import build_network, bundle_config
    from monai_moe_reg.networks.config import network_config
    from monai_moe_reg.weights import load_network_weights

    parser = bundle_config(src)
    for key, value in (overrides or {}).items():
        parser[key] = value
    network = build_network(parser)
    load_network_weights(network, checkpoint, src)
    return zoo_state_dict(network), network_config(network)


def _write_bytes(data: bytes, fh) -> None:
    fh.write(data)


def export_zoo_bundle(
    bundle: str | os.PathLike,
    output: str | os.PathLike,
    checkpoint: str | os.PathLike,
    overrides: dict | None = None,
    force: bool = False,
    weights_url: str | None = None,
    weights_dir: str | os.PathLike | None = None,
) -> Path:
    """Write a self-contained Model Zoo copy of ``bundle`` to ``output`` (e.g. ``model-zoo/models/shmoareg``).

    With ``weights_url`` the copy is ready for a zoo pull request: ``models/model.pt`` is not in it (the zoo's
    pre-commit refuses files over 1 MB) but listed in ``large_files.yml`` with that URL and its sha256, and written
    to ``weights_dir`` (default ``./zoo_large_files/<bundle>``) for you to upload there (e.g. as a release asset);
    the zoo's CI downloads it with the hash check. Without it, ``models/model.pt`` is inside (a local copy that
    runs as it is). The bundle's own shipped weights file is never copied (``model.pt`` holds the same weights).
    When ``output`` is ``<model-zoo>/models/<name>`` of a checkout with ``ci/unit_tests``, the bundle's zoo unit
    test is written there too (``ci/unit_tests/test_<name>.py``). Configs are written as the zoo's
    ``pretty-format-json`` hook writes them.

    Args:
        bundle: bundle folder or name (``shmoareg``, ``llm_morph``).
        output: new folder (must not exist, or be empty, unless ``force``).
        checkpoint: trained weights (a ``model.pt`` state dict or a resumable checkpoint); they are loaded into the
            bundle's ``network_def`` (so a checkpoint of the other bundle or configuration is refused) and saved as
            ``models/model.pt`` (see :func:`zoo_state_dict`).
        overrides: config overrides used to build the network (e.g. ``{"llm": path}``); the copied configs are not
            changed.
        force: replace an earlier export in ``output``; a folder that holds anything an export does not write, or
            that is (or is inside, or holds) the bundle itself, is never replaced. Everything is checked (the
            weights load into the network) before the output is touched.

    Returns:
        the exported bundle folder.
    """
    import monai_moe_reg
    from monai_moe_reg.bundles import bundle_root
    from monai_moe_reg.data.staging import atomic_save, atomic_write_text, check_replaceable, staged_folder
    from monai_moe_reg.weights import file_hash, large_file_entries

    src = bundle_root(bundle)
    out = Path(output)
    a, b = out.resolve(), Path(src).resolve()
    if a == b or b in a.parents or a in b.parents:
        raise ValueError(
            f"output '{out}' is the bundle '{src}' it exports, or inside it, or holds it: export to a "
            "folder outside the bundle (e.g. model-zoo/models/<name>)."
        )
    written = set(_COPIED) | {"monai_moe_reg", "models"}

    def replaceable(folder: Path) -> list[str]:  # --force replaces an earlier export only, never other files
        if not force:
            return sorted(p.name for p in folder.iterdir())
        return sorted(p.name for p in folder.iterdir() if p.name not in written)

    if out.exists() and not out.is_dir():
        raise FileExistsError(f"'{out}' exists and is not a folder: choose a new folder.")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise FileExistsError(
            f"'{out}' exists and is not empty: choose a new folder, or pass --force to replace "
            "an earlier export there."
        )
    check_replaceable(out, replaceable)
    if weights_url is not None and not re.match(r"^(https?|file)://", str(weights_url)):
        raise ValueError(
            f"--weights-url must be the http(s) URL the zoo downloads models/model.pt from, got " f"{weights_url!r}."
        )
    state, _ = _trained_state(src, checkpoint, overrides)  # every input checked before anything is written
    unit_test = _zoo_unit_test(src, out)

    with staged_folder(out, replaceable, marker=False) as staging:  # assembled aside, renamed when complete
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        for name in _COPIED:
            if (src / name).is_dir():
                shutil.copytree(src / name, staging / name, ignore=ignore)
            elif (src / name).is_file():
                shutil.copy2(src / name, staging / name)
        package_ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "_bundles")  # a wheel's bundles: not twice
        shutil.copytree(Path(monai_moe_reg.__file__).parent, staging / "monai_moe_reg", ignore=package_ignore)
        (staging / "models").mkdir(exist_ok=True)
        # files with a download URL stay listed; the committed shipped weights are left out (model.pt has them)
        entries = [e for e in large_file_entries(src) if e.get("url")]
        if weights_url is None:
            atomic_save(state, staging / "models" / "model.pt")
        else:
            model = atomic_save(state, upload_dir(src, weights_dir) / "model.pt")
            digest = file_hash(model)
            entries.append(
                {"path": "models/model.pt", "url": str(weights_url), "hash_val": digest, "hash_type": "sha256"}
            )
        (staging / "large_files.yml").write_text(_large_files_yml(entries))
        meta_path = staging / "configs" / "metadata.json"
        meta = json.loads(meta_path.read_text())
        packages = {k: v for k, v in meta.get("required_packages_version", {}).items() if k != "monai-moe-reg"}
        meta["required_packages_version"] = {**packages, **zoo_requirements()}
        if "numpy_version" in meta:
            meta["numpy_version"] = zoo_version("numpy", meta["numpy_version"])
        meta_path.write_text(zoo_json(meta))
        for config in (staging / "configs").rglob("*.json"):
            if config != meta_path:  # the package travels inside: imported through @package (vendored_config)
                config.write_text(zoo_json(vendored_config(json.loads(config.read_text()))))
    if unit_test is not None:
        atomic_write_text(unit_test[0], unit_test[1])
    return out


def upload_dir(bundle: str | os.PathLike, weights_dir: str | os.PathLike | None = None) -> Path:
    """Where :func:`export_zoo_bundle` with ``weights_url`` writes the ``model.pt`` to upload: ``weights_dir``, else
    ``./zoo_large_files/<bundle folder name>``."""
    return Path(weights_dir) if weights_dir else Path.cwd() / "zoo_large_files" / Path(bundle).resolve().name


ZOO_TEST_HEADER = "# Model Zoo unit test for the "


def _zoo_test_text(name: str) -> str:
    """The zoo unit test of bundle ``name`` (``monai_moe_reg/zoo_tests/test_<name>.py``)."""
    return (Path(__file__).resolve().parent / "zoo_tests" / f"test_{name}.py").read_text()


def _zoo_unit_test(src: Path, out: Path) -> tuple[Path, str] | None:
    """``(path, text)`` of the bundle's zoo unit test when ``out`` is ``<zoo>/models/<name>`` in a model-zoo
    checkout (``<zoo>/ci/unit_tests`` exists), else ``None``; a file there that is not one of ours is never
    replaced (``FileExistsError``)."""
    tests = out.resolve().parent.parent / "ci" / "unit_tests"
    if out.resolve().parent.name != "models" or not tests.is_dir():
        return None
    name = Path(src).resolve().name
    text = _zoo_test_text(name)
    target = tests / f"test_{out.resolve().name}.py"
    if target.exists() and not target.read_text().startswith(ZOO_TEST_HEADER):
        raise FileExistsError(f"'{target}' exists and was not written by monai-moe-reg: move it away first.")
    return target, text.replace(f'"models/{name}"', f'"models/{out.resolve().name}"')


def run_bundle_workflows(bundle_root: str | os.PathLike, work_dir: str | os.PathLike, overrides: dict) -> list[str]:
    """The Model Zoo unit tests' checks on a bundle: ``train.json`` (with ``overrides``), ``train.json`` +
    ``evaluate.json``, then ``inference.json`` (weights not loaded, as the zoo's tests do), each initialised,
    checked for the workflow's required properties, run and finalised. Data, checkpoints and outputs go to
    ``work_dir`` (the embedded synthetic demo set is generated there). Returns the workflows run; raises on the
    first failure with the workflow named."""
    from monai.bundle import ConfigWorkflow

    root, work = Path(bundle_root), Path(work_dir)
    configs = root / "configs"
    common = {
        "bundle_root": str(root),
        "dataset_dir": str(work / "data"),
        "ckpt_dir": str(work / "models"),
        "output_dir": str(work / "eval"),
        **overrides,
    }
    runs = [
        ("train", [configs / "train.json"], "train", {}),
        ("evaluate", [configs / "train.json", configs / "evaluate.json"], "train", {}),
        (
            "inference",
            [configs / "inference.json"],
            "infer",
            {
                "handlers#0#_disabled_": True,
                "checkpoint": str(work / "models" / "model.pt"),
                "output_dir": str(work / "inference"),
            },
        ),
    ]
    done = []
    for name, files, kind, extra in runs:
        wf = ConfigWorkflow(
            workflow_type=kind,
            config_file=[str(f) for f in files],
            meta_file=str(configs / "metadata.json"),
            logging_file=str(configs / "logging.conf"),
            **{**common, **extra},
        )
        wf.initialize()
        missing = wf.check_properties()
        if missing:
            raise ValueError(f"{name}: the workflow lacks the required properties {missing}")
        wf.run()
        wf.finalize()
        done.append(name)
    return done


def ship_weights(
    bundle: str | os.PathLike,
    checkpoint: str | os.PathLike,
    filename: str = "pretrained.safetensors",
    overrides: dict | None = None,
) -> Path:
    """Package trained weights as the bundle's shipped pretrained file: loaded into the bundle's ``network_def``
    (refused if they do not fit), saved as ``models/<filename>`` (safetensors; half precision when single precision
    would exceed 25 MB) and listed in ``large_files.yml`` with its sha256, which
    :func:`~monai_moe_reg.weights.load_network_weights` checks on every load. Both files are written with
    :func:`~monai_moe_reg.engines.atomic_save`: a kill leaves the old or the new file, never a torn one. Returns the
    file."""
    import hashlib

    from monai_moe_reg.bundles import bundle_root
    from monai_moe_reg.engines.checkpoints import atomic_save
    from monai_moe_reg.weights import large_file_entries
    from safetensors.torch import save

    src = bundle_root(bundle)
    state, config = _trained_state(src, checkpoint, overrides)
    state = {k: v.contiguous() for k, v in state.items()}
    data = save(state, metadata={"source": Path(checkpoint).name, "network": json.dumps(config)})
    digest = hashlib.sha256(data).hexdigest()
    target = atomic_save(data, src / "models" / filename, writer=_write_bytes)
    rel = f"models/{filename}"
    entries = [e for e in large_file_entries(src) if e.get("path") != rel]
    entries.append({"path": rel, "url": "", "hash_val": digest, "hash_type": "sha256"})
    header = (
        [line for line in (src / "large_files.yml").read_text().splitlines() if line.startswith("#")]
        if (src / "large_files.yml").is_file()
        else []
    )
    body = ["large_files:"] + [
        f'  - path: "{e["path"]}"\n    url: "{e.get("url", "")}"\n    hash_val: "{e.get("hash_val", "")}"\n'
        f'    hash_type: "{e.get("hash_type", "sha256")}"'
        for e in entries
    ]
    atomic_save(("\n".join(header + body) + "\n").encode(), src / "large_files.yml", writer=_write_bytes)
    return target


def bundle_test_case(bundle_root: str | os.PathLike, overrides: dict):
    """A ``unittest.TestCase`` class for the Model Zoo's unit-test runner (``ci/unit_tests/test_<bundle>.py``):
    :func:`run_bundle_workflows` with ``overrides`` in a temporary folder, then the trained ``model.pt`` and the
    inference outputs must exist."""
    import tempfile
    import unittest

    class BundleWorkflows(unittest.TestCase):
        def setUp(self):
            self.work = tempfile.mkdtemp()

        def tearDown(self):
            shutil.rmtree(self.work)

        def test_train_evaluate_infer(self):
            done = run_bundle_workflows(bundle_root, self.work, overrides)
            self.assertEqual(done, ["train", "evaluate", "inference"])
            self.assertTrue(os.path.isfile(os.path.join(self.work, "models", "model.pt")))
            self.assertTrue(os.listdir(os.path.join(self.work, "inference")))

    return BundleWorkflows
