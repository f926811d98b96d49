"""Bundle configs are code: a refusal before running one that would execute code this package does not ship.

A MONAI bundle config runs Python: every ``"$..."`` string is evaluated, every ``"_target_"`` is imported and called,
and ``"%file#key"`` macros pull in other files. When ``monai-moe-reg`` commands read a bundle (``register``,
``evaluate``, ``export``, ``zoo-export``), the config is checked first: ``$`` expressions must be ones the shipped
bundles' configs contain verbatim (or as a Model Zoo export rewrites them), ``_target_`` s must be MONAI's registered
names or live in ``monai``, ``torch``, ``ignite`` or ``monai_moe_reg``, and macros must point into the same bundle.
Anything else needs an explicit opt-in (``--trust-bundle``, or the environment variable
``MONAI_MOE_REG_TRUST_BUNDLE=1``); otherwise a one-line error lists what would run. Changing numbers or file names
in a shipped config needs no opt-in. Written here because MONAI's ``ConfigParser`` evaluates whatever it reads.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

__all__ = ["TRUST_ENV", "check_bundle_code", "untrusted_code"]

TRUST_ENV = "MONAI_MOE_REG_TRUST_BUNDLE"
SAFE_TARGET_PREFIXES = ("monai.", "torch.", "ignite.", "monai_moe_reg.")
HERE = Path(__file__).resolve().parent
SHIPPED = (HERE / "_bundles", HERE.parent / "bundles")  # a wheel's copy, a checkout's bundles


def _strings(obj, key: str = ""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _strings(v, str(k))
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _strings(v, key)
    elif isinstance(obj, str):
        yield key, obj


def _load(path: Path):
    from monai.bundle import ConfigParser

    return ConfigParser.load_config_file(str(path))


@functools.lru_cache(maxsize=1)
def shipped_expressions() -> frozenset[str]:
    """Every ``$`` expression of the configs shipped with this package (both bundles, their recipes)."""
    found = set()
    # a wheel: _bundles/<name>/configs; a checkout: bundles/<name>/configs; a zoo export: the bundle holds the package
    paths = [p for root in SHIPPED for p in root.glob("*/configs/**/*.json")] + list(
        (HERE.parent / "configs").glob("**/*.json")
    )
    from monai_moe_reg.vendoring import vendored_config

    for path in paths:
        try:
            config = _load(path)
        except (OSError, ValueError):
            continue
        for form in (config, vendored_config(config)):  # as shipped, and as a Model Zoo export writes it
            found |= {s.strip() for _, s in _strings(form) if s.startswith("$")}
    return frozenset(found)


def untrusted_code(config, bundle_dir: str | os.PathLike | None = None) -> list[str]:
    """The parts of a parsed config that would run code not shipped with this package (see the module docs)."""
    own = shipped_expressions()
    out = []
    for key, s in _strings(config):
        if s.startswith("$") and s.strip() not in own:
            out.append(s)
        elif key == "_target_" and "." in s and not s.startswith(SAFE_TARGET_PREFIXES):
            out.append(f"_target_: {s}")
        elif s.startswith("%"):
            ref = s[1:].split("#", 1)[0]
            if ref and (bundle_dir is None or Path(bundle_dir).resolve() not in Path(ref).resolve().parents):
                out.append(s)
    return out


def check_bundle_code(path: str | os.PathLike, trust: bool | None = None) -> None:
    """Raise a ``ValueError`` listing what the config at ``path`` would run beyond this package's own code, unless
    ``trust`` (default: the :data:`TRUST_ENV` environment variable) says to run it."""
    if trust is None:
        trust = os.environ.get(TRUST_ENV, "").strip().lower() in ("1", "true", "yes")
    if trust:
        return
    path = Path(path)
    found = untrusted_code(_load(path), path.parent.parent)
    if found:
        shown = "; ".join(f"`{s[:80]}`" for s in found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
        raise ValueError(
            f"bundle config '{path}' would run code that is not monai-moe-reg's own ({shown}): pass "
            f"--trust-bundle (or set {TRUST_ENV}=1) only if you trust where it came from."
        )
