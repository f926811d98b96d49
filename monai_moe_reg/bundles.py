"""Where a bundle lives and its configs: the folder the configs' ``bundle_root`` means, a bundle given by name or
path, its parsed configs (checked by :mod:`monai_moe_reg.trust`) and its network. Weights are in
:mod:`monai_moe_reg.weights`, resuming in :mod:`monai_moe_reg.engines.resume`."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "build_network",
    "bundle_config",
    "bundle_dir",
    "bundle_root",
    "installed_bundles",
    "locate",
    "registration_section",
    "require_path",
    "work_dir",
]

BUNDLE_NAMES = ("shmoareg", "llm_morph")


def installed_bundles() -> list[Path]:
    """Folders that hold the shipped bundles, first found first: ``_bundles`` inside the installed package (a
    wheel) and ``bundles`` beside the package (a checkout, also an editable install)."""
    here = Path(__file__).resolve().parent
    return [p for p in (here / "_bundles", here.parent / "bundles") if p.is_dir()]


def locate(name: str) -> str:
    """Folder of bundle ``name``: ``./bundles/<name>`` (run from a checkout's root), the current folder when it is
    the bundle itself, else the copy installed with the package (:func:`installed_bundles`). Pass
    ``--bundle_root`` to ``monai.bundle run`` (or a folder as ``--bundle`` to the CLI) to choose another place."""
    if name not in BUNDLE_NAMES:
        raise ValueError(f"unknown bundle {name!r}; expected one of {BUNDLE_NAMES}.")
    candidates = [Path.cwd() / "bundles" / name, Path.cwd()] + [p / name for p in installed_bundles()]
    for c in candidates:
        if (c / "configs" / "metadata.json").is_file() and c.name == name:
            return str(c)
    raise FileNotFoundError(
        f"cannot find the '{name}' bundle folder (not in ./bundles, not installed with the package: reinstall "
        f"monai-moe-reg); pass the bundle folder itself, e.g. --bundle path/to/bundles/{name}."
    )


def bundle_dir(root: str | os.PathLike, name: str, configs_bundle: str | os.PathLike | None = None) -> str:
    """Absolute bundle folder for the configs' ``bundle_root`` (``"."`` by default, as in Model Zoo bundles).

    ``root`` itself when it is a bundle folder (has ``configs/metadata.json``): the current folder when run from the
    bundle (``cd bundles/shmoareg && python -m monai.bundle run --config_file configs/train.json``), or the folder
    given with ``--bundle_root``. For the default ``"."`` elsewhere: ``./bundles/<name>`` from a checkout's root
    (logged), else ``configs_bundle``, the bundle whose configs are being run (a Model Zoo export passes it, so that
    ``monai.bundle.load`` and runs from another folder find their own bundle). Anything else is a
    ``FileNotFoundError`` naming the fix. Nothing is written there by default: see :func:`work_dir`.
    """
    import logging

    path = Path(root).resolve()
    if (path / "configs" / "metadata.json").is_file():
        return str(path)
    if str(root) == ".":
        nested = path / "bundles" / name
        if (nested / "configs" / "metadata.json").is_file():
            logging.getLogger(__name__).info("bundle_root '.' is a checkout's root: using %s", nested)
            return str(nested)
        if configs_bundle is not None and (Path(configs_bundle) / "configs" / "metadata.json").is_file():
            return str(Path(configs_bundle).resolve())
    raise FileNotFoundError(
        f"bundle_root '{root}' ({path}) is not a bundle folder (no configs/metadata.json): run from the bundle folder "
        f"(cd bundles/{name}) or pass --bundle_root <path to the {name} bundle>."
    )


WORK_ENV = "MONAI_MOE_REG_WORK_DIR"


def work_dir(name: str) -> str:
    """Where a bundle run writes by default (the configs' ``work_dir``: ``data/`` for the generated demo set,
    ``models/`` for checkpoints, ``eval/`` for outputs, ``cache/``): ``$MONAI_MOE_REG_WORK_DIR/<name>`` when that
    variable is set, else ``<cache>/monai_moe_reg/<name>`` (``$XDG_CACHE_HOME`` or ``~/.cache``). Never inside the
    bundle, so a bundle folder (a checkout, a Model Zoo download, an installed copy) is only read. Pass
    ``--work_dir`` (or ``--dataset_dir``/``--ckpt_dir``/``--output_dir``) to choose; the folder is logged."""
    import logging

    base = os.environ.get(WORK_ENV, "").strip()
    if base:
        folder = Path(base).expanduser() / name
    else:
        cache = os.environ.get("XDG_CACHE_HOME", "").strip() or str(Path.home() / ".cache")
        folder = Path(cache).expanduser() / "monai_moe_reg" / name
    logging.getLogger(__name__).info("%s writes to %s (pass --work_dir to choose another folder)", name, folder)
    return str(folder.resolve())


def require_path(path: str | os.PathLike, hint: str) -> str:
    """``path`` (a file or folder) if it exists, else a ``FileNotFoundError`` with ``hint`` (used before loading
    checkpoints and LLMs, so a missing one fails before anything is built)."""
    if not Path(path).exists():
        raise FileNotFoundError(f"'{path}' does not exist: {hint}.")
    return str(path)


def bundle_root(bundle: str | os.PathLike) -> Path:
    """The bundle folder: ``bundle`` itself, or for a bundle name (``shmoareg``, ``bundles/llm_morph``) the folder
    :func:`locate` finds."""
    root = Path(bundle)
    if (root / "configs" / "inference.json").is_file():
        return root
    if root.name in BUNDLE_NAMES:
        return Path(locate(root.name))
    raise FileNotFoundError(
        f"'{root}' is not a bundle folder (no configs/inference.json): give a bundle name (--bundle shmoareg or "
        "llm_morph) or a bundle folder."
    )


def bundle_config(bundle: str | os.PathLike, config: str = "inference.json"):
    """A MONAI ``ConfigParser`` of the bundle's ``configs/<config>`` with ``bundle_root`` set to the bundle folder;
    a config that would run code this package does not ship is refused unless trusted
    (:func:`monai_moe_reg.trust.check_bundle_code`)."""
    from monai.bundle import ConfigParser
    from monai_moe_reg.trust import check_bundle_code

    root = bundle_root(bundle)
    check_bundle_code(root / "configs" / config)  # a config that would run foreign code needs an opt-in
    parser = ConfigParser()
    try:
        parser.read_config(str(root / "configs" / config))
    except ValueError as err:
        raise ValueError(f"cannot read '{root / 'configs' / config}': {err}") from err
    parser["bundle_root"] = str(root.resolve())
    return parser


def build_network(parser, hint: str = ""):
    """The bundle's ``network_def`` from ``parser``. When building it fails for a reason the user can fix (a missing
    file such as LLM-Morph's LLM, a bad value), that reason is raised with ``hint`` appended, not MONAI's generic
    "failed to instantiate" wrapper (so the CLI prints it in one line)."""
    try:
        return parser.get_parsed_content("network_def")
    except RuntimeError as err:
        cause = err.__cause__
        while cause is not None and not isinstance(cause, (OSError, ValueError)):
            cause = cause.__cause__
        if cause is None:
            raise
        raise type(cause)(f"{cause}{hint}") from err


def registration_section(bundle: str | os.PathLike) -> dict:
    """The parsed ``registration`` section of the bundle's ``configs/inference.json`` (similarity losses built):
    what ``evaluate.json`` (run on top of ``train.json``) registers with, so that evaluation runs the same pipeline
    as inference and ``monai-moe-reg register``."""
    parser = bundle_config(bundle, "inference.json")
    if "registration" not in parser:
        raise ValueError(f"bundle '{bundle}' has no 'registration' section in configs/inference.json.")
    return parser.get_parsed_content("registration")
