"""Bundle configs for a copy that carries this package inside the bundle folder (a Model Zoo export).

A leaf module (no imports from this package), used by :mod:`monai_moe_reg.zoo` to write an export and by
:mod:`monai_moe_reg.trust` to recognise an export's configs as this package's own.
"""

from __future__ import annotations

import re

__all__ = ["vendored_config"]

_PACKAGE = "monai_moe_reg"
_PACKAGE_REF = re.compile(r"(?<![\w.@'\"])monai_moe_reg\.")
_QUOTED = re.compile(r"""('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")""")
_BUNDLE_DIR = re.compile(r"(bundles\.bundle_dir\(@bundle_root, '\w+')\)")
# The folder that holds the vendored package: --bundle_root when it is the bundle, else the bundle whose configs
# the running ConfigWorkflow read (its config_root_path; monai.bundle.load() passes no bundle_root), else bundle_root.
_PACKAGE_ROOT = (
    "$os.path.abspath(@bundle_root) if os.path.isdir(os.path.join(@bundle_root, 'monai_moe_reg')) else "
    "next((os.path.abspath(i.frame.f_locals['self'].config_root_path.parent) for i in inspect.stack(0) "
    "if isinstance(i.frame.f_locals.get('self'), monai.bundle.ConfigWorkflow)), os.path.abspath(@bundle_root))"
)
# (MONAI parses any expression containing the word "import" as an import statement: hence the alias)
_BOOT_IMPORTS = ("$import os", "$import sys", "$import inspect", "$from importlib import import_module as load_module")


def vendored_config(config: dict) -> dict:
    """A bundle config rewritten for a copy that carries the package inside the bundle folder (a Model Zoo export).

    MONAI evaluates a config's import statements before anything else and puts the bundle folder on ``sys.path``
    only in ``ConfigWorkflow.run()``, after ``initialize()`` (``monai.bundle.load()`` never does), so
    ``"$import monai_moe_reg"`` fails unless the package is installed. The copy instead imports it through one item,
    ``package``, which first puts ``package_root`` (the bundle folder, found from ``--bundle_root`` or from the
    running workflow's config files) on ``sys.path``: every ``monai_moe_reg.`` in an expression becomes
    ``@package.``, every component whose ``_target_`` is in the package requires ``@package``, and ``bundle_dir``
    falls back to ``package_root`` (so ``bundle_root "."`` works from any folder). A config without ``imports`` (an
    overlay such as ``evaluate.json``) only has its expressions and components rewritten."""
    modules: list[str] = []

    def rewrite(obj):
        if isinstance(obj, dict):
            out = {k: rewrite(v) for k, v in obj.items()}
            target = out.get("_target_")
            if isinstance(target, str) and target.startswith(_PACKAGE + "."):
                req = out.get("_requires_")
                out["_requires_"] = (
                    "@package" if req is None else [*(req if isinstance(req, list) else [req]), "@package"]
                )
            return out
        if isinstance(obj, list):
            return [rewrite(v) for v in obj]
        if isinstance(obj, str) and obj.startswith("$"):  # code only, never inside a quoted string
            parts = _QUOTED.split(obj)
            obj = "".join(part if i % 2 else _PACKAGE_REF.sub("@package.", part) for i, part in enumerate(parts))
            return _BUNDLE_DIR.sub(r"\1, @package_root)", obj)
        return obj

    out = {}
    for key, value in config.items():
        if key == "imports":
            kept = []
            for line in value:
                m = re.match(r"^\$\s*import\s+(monai_moe_reg(?:\.\w+)*)\s*$", line)
                if m:
                    modules.append(m.group(1))
                elif re.match(r"^\$\s*from\s+monai_moe_reg\b", line):
                    raise ValueError(f"cannot vendor the import {line!r}: use '$import monai_moe_reg...' in configs.")
                else:
                    kept.append(line)
            out["imports"] = [*[i for i in _BOOT_IMPORTS if i not in kept], *kept]
            names = [_PACKAGE] + [m for m in modules if m != _PACKAGE]
            out["package_root"] = _PACKAGE_ROOT
            out["package"] = (
                "$(sys.path.insert(0, @package_root) if @package_root not in sys.path else None, "
                f"[load_module(m) for m in {names!r}][0])[1]"
            )
            continue
        out[key] = rewrite(value)
    return out
