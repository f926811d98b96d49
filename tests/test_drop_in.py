"""Our networks dropped into a MONAI-tutorial-style plain training loop (no bundle, no engine)."""

import copy

import pytest
import torch
from monai.bundle import ConfigParser
from monai.losses import BendingEnergyLoss, LocalNormalizedCrossCorrelationLoss
from monai.networks.blocks import Warp
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from monai_moe_reg.data import synthetic_pair
from monai_moe_reg.losses import SHMoARegLoss
from monai_moe_reg.networks.nets import LLMMorph, SHMoAReg, VoxelMorphStyle

from .conftest import TINY_LLM_MORPH as TINY_LLM
from .conftest import tiny_shmoareg_kwargs


def batch(size=(30, 28, 26), n=2):
    pairs = [synthetic_pair(size, seed=s) for s in range(n)]
    moving = torch.stack([p["moving_image"] for p in pairs])
    fixed = torch.stack([p["fixed_image"] for p in pairs])
    return moving, fixed


@pytest.mark.parametrize("name", ["SHMoAReg", "LLMMorph"])
def test_tutorial_loop_with_ema_deepcopy_and_aux_terms(name, llama_dir):
    torch.manual_seed(0)
    if name == "SHMoAReg":
        net = SHMoAReg(**tiny_shmoareg_kwargs(flow_init_std=0.0))
    else:
        net = LLMMorph(str(llama_dir), llm_layers=(1, 2), lora_rank=4, flow_init_std=0.0, **TINY_LLM)
    moving, fixed = batch()
    x = torch.cat([moving, fixed], 1)
    with torch.no_grad():
        assert torch.count_nonzero(net(x)) == 0  # zero-initialised flow heads: the identity at step 0
    ema = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(0.9))
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-3)
    warp, sim, reg = Warp(), LocalNormalizedCrossCorrelationLoss(kernel_size=5), BendingEnergyLoss()
    aux_loss = SHMoARegLoss(similarity="lncc", lambda_reg=0.0)  # adds the routing and MoA terms explicitly
    losses = []
    for _ in range(3):
        opt.zero_grad()
        if name == "SHMoAReg":
            ddf, aux = net(x, return_aux=True)
            terms = aux_loss(moving, fixed, ddf, aux)
            assert set(terms) >= {"rc", "balance", "z"} and terms["balance"] > 0
            loss = terms["loss"] + 0.1 * reg(ddf)
        else:
            ddf = net(x)
            loss = sim(warp(moving, ddf), fixed) + 0.1 * reg(ddf)
        loss.backward()
        opt.step()
        ema.update_parameters(net)
        losses.append(float(loss))
        copy.deepcopy(net)  # nothing non-leaf is left on the modules after a step
    assert all(torch.isfinite(torch.tensor(losses)))
    with torch.no_grad():
        assert ema(x).shape == ddf.shape and torch.count_nonzero(net(x)) > 0


def test_voxelmorph_style_adapter_and_short_target_names():
    net = SHMoAReg(**tiny_shmoareg_kwargs())
    model = VoxelMorphStyle(net)
    moving, fixed = batch((16, 16, 16), n=1)
    warped, ddf = model(moving, fixed)
    assert warped.shape == moving.shape and ddf.shape == (1, 3, 16, 16, 16)
    assert torch.allclose(warped, Warp(padding_mode="border")(moving, ddf))
    warped, ddf, aux = model(moving, fixed, return_aux=True)
    assert "routing" in aux
    # short "_target_" names resolve in MONAI bundle configs once the package is imported (our configs import it)
    parsed = ConfigParser({"imports": ["$import monai_moe_reg.networks.nets"],
                           "net": {"_target_": "SHMoAReg", **tiny_shmoareg_kwargs()}}).get_parsed_content("net")
    assert type(parsed).__name__ == "SHMoAReg"
