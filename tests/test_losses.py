import pytest
import torch

from monai_moe_reg.losses import RoutingClassificationLoss, SHMoARegLoss, make_similarity, routing_targets
from monai_moe_reg.networks.blocks import SHMoE
from monai_moe_reg.networks.nets import SHMoAReg

from .conftest import tiny_shmoareg_kwargs


def test_routing_targets_pick_the_expert_that_reduces_the_error():
    ramp = torch.arange(8.0).view(1, 1, 8, 1, 1).expand(1, 1, 8, 8, 8)  # dW/dx0 = 1, dW/dx1 = dW/dx2 = 0
    warped, fixed = ramp, ramp + 2.0  # residual -2: moving +2 voxels along axis 0 fixes it
    experts = torch.zeros(1, 3, 3, 8, 8, 8)
    experts[:, 0, 1] = 2.0
    experts[:, 0, 2] = 5.0
    targets, valid = routing_targets(warped, fixed, experts)
    assert targets.shape == experts.shape
    assert torch.all(targets[:, 0].argmax(1) == 1)
    assert valid[:, 0].all()
    assert not valid[:, 1:].any()  # no image gradient along axes 1 and 2: every expert ties, no label


def test_routing_targets_give_the_zero_expert_to_directions_with_no_motion():
    """A +1 voxel shift along axis 0 of a smooth random image, experts 0 / +1 / -1 in every direction: axis 0's
    target is the +1 expert, and the two axes along which nothing moves get the zero expert (the independent
    per-direction rule gave it them only about half the time, the motion along axis 0 leaking into their
    residual)."""
    from monai.networks.layers import GaussianFilter

    img = GaussianFilter(3, 2.0)(torch.rand(1, 1, 32, 32, 32, generator=torch.Generator().manual_seed(0)))
    img = (img - img.min()) / (img.max() - img.min())
    fixed, warped = img[:, :, 8:24, 8:24, 8:24], img[:, :, 7:23, 8:24, 8:24]
    experts = torch.zeros(1, 3, 3, 16, 16, 16)
    experts[:, :, 1], experts[:, :, 2] = 1.0, -1.0
    targets, valid = routing_targets(warped, fixed, experts)
    chosen = targets.argmax(2)
    assert valid.float().mean() > 0.9
    assert (chosen[:, 0] == 1)[valid[:, 0]].float().mean() > 0.95
    for axis in (1, 2):
        assert (chosen[:, axis] == 0)[valid[:, axis]].float().mean() > 0.9
    flat = torch.ones(1, 1, 16, 16, 16)  # no image gradient at all: nothing to label
    assert not routing_targets(flat, flat + 0.1, experts)[1].any()


def test_minimising_rc_loss_moves_the_router_toward_the_targets():
    layer = SHMoE(3, in_channels=4, init_std=0.5)
    x = torch.randn(1, 4, 8, 8, 8)
    moving = torch.rand(1, 1, 8, 8, 8)
    fixed = torch.roll(moving, 1, dims=2)
    rc = RoutingClassificationLoss()
    opt = torch.optim.Adam(layer.router.parameters(), lr=0.05)

    def step():
        _, aux = layer(x, return_aux=True)
        return rc([{"level": 0, **aux, "prior_ddf": None}], moving, fixed)

    targets, valid = routing_targets(moving, fixed, layer(x, return_aux=True)[1]["experts"])

    def agreement():
        return (layer(x, return_aux=True)[1]["selection"] == targets.argmax(2))[valid].float().mean().item()

    first, acc0 = step().item(), agreement()
    for _ in range(60):
        opt.zero_grad()
        loss = step()
        loss.backward()
        opt.step()
    last = step().item()
    assert last < 0.7 * first
    assert agreement() > max(0.8, acc0 + 0.2)


def test_rc_loss_on_network_records_and_padding():
    net = SHMoAReg(**tiny_shmoareg_kwargs())
    moving, fixed = torch.rand(1, 1, 13, 16, 10), torch.rand(1, 1, 13, 16, 10)  # padded to 16^3 inside
    _, aux = net(torch.cat([moving, fixed], 1), return_aux=True)
    assert [r["level"] for r in aux["moe"]] == [0, 1]
    assert [tuple(r.shape[3:]) for r in aux["routing"]] == [(13, 16, 10), (7, 8, 5)]  # cropped to the input
    loss = RoutingClassificationLoss()(aux["moe"], moving, fixed)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(layer.router.weight.grad is not None for layer in net.decoder.moe_layers())


def test_shmoareg_loss_terms():
    net = SHMoAReg(**tiny_shmoareg_kwargs())
    moving, fixed = torch.rand(1, 1, 16, 16, 16), torch.rand(1, 1, 16, 16, 16)
    loss_fn = SHMoARegLoss(lambda_reg=0.1, lambda_rc=0.001)
    ddf, aux = net(torch.cat([moving, fixed], 1), return_aux=True)
    assert loss_fn(moving, fixed, ddf, aux)["rc"] == 0  # at init all experts predict ~0: ties carry no label
    for layer in net.decoder.moe_layers():
        for expert in layer.experts:
            torch.nn.init.normal_(expert.weight, 0, 0.05)
    ddf, aux = net(torch.cat([moving, fixed], 1), return_aux=True)
    terms = loss_fn(moving, fixed, ddf, aux)
    assert set(terms) == {"loss", "sim", "reg", "rc", "balance", "z"}
    expected = terms["sim"] + 0.1 * terms["reg"] + 0.001 * terms["rc"] + 1e-4 * terms["balance"] + 1e-5 * terms["z"]
    assert torch.allclose(terms["loss"], expected)
    assert terms["rc"] > 0 and terms["balance"] > 0
    terms["loss"].backward()


def test_similarity_choices():
    assert isinstance(make_similarity("mse"), torch.nn.MSELoss)
    lncc = make_similarity("lncc", spatial_dims=3)
    assert lncc(torch.rand(1, 1, 12, 12, 12), torch.rand(1, 1, 12, 12, 12)).ndim == 0
    with pytest.raises(ValueError, match="similarity"):
        make_similarity("ssd")


def test_gradient_loss_penalises_a_checkerboard_that_diffusion_loss_misses():
    """A +-0.5 voxel checkerboard displacement: MONAI's central-difference ``DiffusionLoss`` is exactly 0, the
    forward-difference gradient loss is |1|^2 per axis (l2) or |1| (l1) on the oscillating component."""
    from monai.losses import DiffusionLoss

    from monai_moe_reg.losses import GradientLoss

    i, j, k = torch.meshgrid(*[torch.arange(12)] * 3, indexing="ij")
    board = 0.5 * (-1.0) ** (i + j + k).float()
    ddf = torch.stack([board, torch.zeros_like(board), torch.zeros_like(board)])[None]
    assert float(DiffusionLoss()(ddf)) == pytest.approx(0.0, abs=1e-12)
    # component 0 differs by 1 between neighbours along every axis: mean over 3 components = 1/3 per axis
    assert float(GradientLoss("l2")(ddf)) == pytest.approx(1.0 / 3.0)
    assert float(GradientLoss("l1")(ddf)) == pytest.approx(1.0 / 3.0)


def test_gradient_loss_equals_the_forward_difference_value_on_analytic_fields():
    """``u_c = a * x_c`` (each component a ramp along its own axis): every forward difference of component d along
    axis d is a, all others 0, so Grad('l2') = a^2 / 3 and Grad('l1') = |a| / 3; a quadratic ``u_0 = x_0^2`` has
    forward differences 2x + 1. On a smooth field DiffusionLoss (axes summed, central differences) is ~3x."""
    from monai.losses import DiffusionLoss

    from monai_moe_reg.losses import GradientLoss

    n, a = 10, 0.3
    axes = torch.meshgrid(*[torch.arange(n, dtype=torch.float64)] * 3, indexing="ij")
    ramp = torch.stack([a * x for x in axes])[None]
    assert float(GradientLoss("l2")(ramp)) == pytest.approx(a * a / 3)
    assert float(GradientLoss("l1")(-ramp)) == pytest.approx(a / 3)
    quad = torch.zeros(1, 3, n, n, n, dtype=torch.float64)
    quad[:, 0] = axes[0] ** 2
    x = torch.arange(n - 1, dtype=torch.float64)
    expected = float(((2 * x + 1) ** 2).mean()) / 3 / 3  # mean over the 3 components, then over the 3 axes
    assert float(GradientLoss()(quad)) == pytest.approx(expected)
    smooth = torch.stack([torch.sin(x / 6.0) for x in axes])[None]
    ratio = float(DiffusionLoss()(smooth)) / float(GradientLoss()(smooth))
    assert 2.5 < ratio < 3.1, ratio


def test_gradient_loss_reductions_and_bad_input():
    from monai_moe_reg.losses import GradientLoss, make_regulariser

    ddf = torch.randn(2, 2, 6, 7)
    per_item = GradientLoss(reduction="none")(ddf)
    assert per_item.shape == (2,)
    assert float(GradientLoss(reduction="sum")(ddf)) == pytest.approx(float(per_item.sum()))
    assert float(GradientLoss()(ddf)) == pytest.approx(float(per_item.mean()))
    with pytest.raises(ValueError, match="displacement field"):
        GradientLoss()(torch.randn(1, 3, 6, 6))
    with pytest.raises(ValueError, match="at least 2 voxels"):
        GradientLoss()(torch.randn(1, 2, 1, 6))
    with pytest.raises(ValueError, match="penalty"):
        GradientLoss("l3")
    with pytest.raises(ValueError, match="regulariser must be one of"):
        make_regulariser("grad")


def test_both_networks_losses_regularise_with_the_papers_gradient_loss_and_lambda():
    """The recipes' lambda are the papers' numbers, and both objectives use the forward-difference gradient loss by
    default (MONAI's DiffusionLoss only when asked for)."""
    import json
    from pathlib import Path

    from monai.losses import DiffusionLoss

    from monai_moe_reg.losses import GradientLoss, LLMMorphLoss

    assert isinstance(SHMoARegLoss().regulariser, GradientLoss)
    assert isinstance(LLMMorphLoss().regulariser, GradientLoss)
    assert isinstance(SHMoARegLoss(regulariser="diffusion").regulariser, DiffusionLoss)
    root = Path(__file__).resolve().parents[1] / "bundles"
    lam = {
        "shmoareg/train": json.loads((root / "shmoareg/configs/train.json").read_text())["loss"]["lambda_reg"],
        "shmoareg/oasis": json.loads((root / "shmoareg/configs/recipes/oasis.json").read_text())["loss#lambda_reg"],
        "shmoareg/btcv": json.loads((root / "shmoareg/configs/recipes/btcv.json").read_text())["loss#lambda_reg"],
        "llm_morph/train": json.loads((root / "llm_morph/configs/train.json").read_text())["loss"]["lambda_reg"],
    }
    assert lam == {"shmoareg/train": 0.01, "shmoareg/oasis": 0.01, "shmoareg/btcv": 0.1, "llm_morph/train": 0.1}
    for cfg in ("shmoareg/configs/train.json", "llm_morph/configs/train.json"):
        assert "regulariser" not in json.loads((root / cfg).read_text())["loss"]  # the default: GradientLoss


def test_warped_label_dice_on_a_label_subset_scores_only_the_drawn_labels():
    """max_labels: a random subset of the present labels per call; identical maps give 0, and with 2 of 5 labels
    drawn the one-hot tensors have 3 channels (background + 2), so the term stays cheap with many structures."""
    from monai_moe_reg.losses import WarpedLabelDice

    torch.manual_seed(0)
    lab = torch.randint(0, 6, (1, 1, 8, 8, 8))
    other = torch.roll(lab, 2, dims=2)
    zero = torch.zeros(1, 3, 8, 8, 8)
    sub = WarpedLabelDice(num_classes=6, max_labels=2)
    assert float(sub(zero, lab, lab)) < 1e-4
    m, f, k = sub._subset(lab, other)
    assert k == 2
    assert int(m.max()) <= 2 and int(f.max()) <= 2 and set(torch.unique(m).tolist()) <= {0, 1, 2}
    kept = torch.unique(lab[m > 0])
    assert kept.numel() == 2 and 0 not in kept.tolist()  # two foreground ids, relabelled consistently in both maps
    for old in kept.tolist():
        assert torch.equal(m[lab == old].unique(), f[other == old].unique())
    full = WarpedLabelDice(num_classes=6)
    assert abs(float(WarpedLabelDice(num_classes=6, max_labels=10)(zero, lab, other)) - float(full(zero, lab, other))) < 1e-6
    with pytest.raises(ValueError, match="max_labels"):
        WarpedLabelDice(num_classes=6, max_labels=0)
    with pytest.raises(ValueError, match="0..5"):
        sub(zero, lab + 1, lab)


def test_warped_label_dice_is_not_diluted_by_sparse_label_ids():
    """Issue 22: ids {0, 3, 7} with num_classes 8 give the loss of the contiguous {0, 1, 2} with 3 classes (empty
    channels used to count as perfect overlaps: 0.105 instead of 0.367), in WarpedLabelDice and LLM-Morph's loss."""
    from monai_moe_reg.losses import LLMMorphLoss, WarpedLabelDice

    torch.manual_seed(0)
    dense = torch.randint(0, 3, (1, 1, 8, 8, 8))
    sparse = torch.tensor([0, 3, 7])[dense]
    moved = torch.roll(dense, 2, dims=2)
    ddf = torch.zeros(1, 3, 8, 8, 8)
    want = float(WarpedLabelDice(num_classes=3)(ddf, dense, moved))
    assert want > 0.2
    got = float(WarpedLabelDice(num_classes=8)(ddf, sparse, torch.tensor([0, 3, 7])[moved]))
    assert abs(got - want) < 1e-6
    assert float(WarpedLabelDice(num_classes=8)(ddf, torch.zeros_like(dense), torch.zeros_like(dense))) == 0.0
    sparse_terms = LLMMorphLoss(num_classes=8)(ddf, sparse, torch.tensor([0, 3, 7])[moved])
    dense_terms = LLMMorphLoss(num_classes=3)(ddf, dense, moved)
    assert abs(float(sparse_terms["dice"]) - float(dense_terms["dice"])) < 1e-6
