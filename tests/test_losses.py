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
