import pytest
import torch
from monai.networks.nets.swin_unetr import WindowAttention, compute_mask

from monai_moe_reg.networks.blocks import MoASwinStage, MoAWindowAttention


def test_topk_selects_exactly_k_heads_per_token():
    attn = MoAWindowAttention(dim=16, num_heads=2, window_size=(2, 2, 2), num_experts=5)
    out = attn(torch.randn(3, 8, 16), None)
    assert out.shape == (3, 8, 16)
    nonzero = (attn.last_gates > 0).sum(-1)
    assert torch.all(nonzero == 2)
    # the kept gates are the two largest router probabilities, not renormalised
    probs = torch.softmax(attn.router(torch.randn(1, 1, 16)), -1)
    assert probs.shape[-1] == 5
    assert torch.all(attn.last_gates.sum(-1) < 1.0)


def test_gates_are_the_router_topk():
    attn = MoAWindowAttention(dim=8, num_heads=1, window_size=(2, 2), num_experts=3)
    x = torch.randn(2, 4, 8)
    attn(x, None)
    probs = torch.softmax(attn.router(x), -1)
    top = probs.argmax(-1)
    assert torch.equal(attn.last_gates.argmax(-1), top)
    assert torch.allclose(attn.last_gates.max(-1).values, probs.max(-1).values)


def test_gradients_reach_every_expert_and_the_router():
    attn = MoAWindowAttention(dim=16, num_heads=2, window_size=(3, 3, 3), num_experts=4)
    x = torch.randn(16, 27, 16, requires_grad=True)
    out = attn(x, None)
    (out.pow(2).mean() + attn.balance_loss + attn.z_loss).backward()
    assert attn.router.weight.grad.abs().sum() > 0
    hd = attn.head_dim
    for e in range(4):
        assert attn.q_proj.weight.grad[e * hd : (e + 1) * hd].abs().sum() > 0, f"no grad for query expert {e}"
        assert attn.o_proj.weight.grad[:, e * hd : (e + 1) * hd].abs().sum() > 0, f"no grad for output expert {e}"
    assert attn.kv_proj.weight.grad.abs().sum() > 0
    assert attn.relative_position_bias_table.grad.abs().sum() > 0


def test_aux_losses_are_available_after_forward():
    attn = MoAWindowAttention(dim=8, num_heads=2, window_size=(2, 2, 2))
    assert attn.balance_loss is None
    attn(torch.randn(2, 8, 8), None)
    assert attn.num_experts == 4
    # a perfectly balanced router gives balance loss 1; it is never below ~1 in expectation
    assert attn.balance_loss.item() > 0.5 and attn.z_loss.item() > 0


def test_shifted_window_mask_is_applied():
    window = (2, 2, 2)
    attn = MoAWindowAttention(dim=8, num_heads=1, window_size=window, num_experts=2)
    mask = compute_mask([4, 4, 4], window, (1, 1, 1), torch.device("cpu"))  # (nW, N, N)
    x = torch.randn(2 * mask.shape[0], 8, 8)
    assert not torch.allclose(attn(x, mask), attn(x, None))


def test_invalid_expert_counts():
    with pytest.raises(ValueError, match="num_experts"):
        MoAWindowAttention(dim=8, num_heads=4, window_size=(2, 2), num_experts=2)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_moa_stage_reuses_monai_stage(spatial_dims):
    window = (2,) * spatial_dims
    stage = MoASwinStage(dim=12, depth=2, num_heads=2, window_size=window)
    assert all(isinstance(b.attn, MoAWindowAttention) for b in stage.blocks)
    x = torch.randn(2, 12, *([5] * spatial_dims))  # not a multiple of the window: padded by MONAI's block
    assert stage(x).shape == x.shape
    plain = MoASwinStage(dim=12, depth=2, num_heads=2, window_size=window, use_moa=False)
    assert all(type(b.attn) is WindowAttention for b in plain.blocks)
