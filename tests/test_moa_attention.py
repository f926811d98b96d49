import pytest
import torch
from monai.networks.nets.swin_unetr import WindowAttention, compute_mask

from monai_moe_reg.networks.blocks import MoASwinStage, MoAWindowAttention
from monai_moe_reg.networks.blocks.window_attention import SwinWindowAttention, relative_position_index


def run(attn, x, mask=None):
    """Forward collecting the auxiliary dict explicitly."""
    sink = []
    attn.collect_aux(sink)
    out = attn(x, mask)
    attn.collect_aux(None)
    assert len(sink) == 1
    return out, sink[0]


def test_topk_selects_exactly_k_heads_per_token():
    attn = MoAWindowAttention(dim=16, num_heads=2, window_size=(2, 2, 2), num_experts=5)
    out, aux = run(attn, torch.randn(3, 8, 16))
    assert out.shape == (3, 8, 16)
    assert torch.all((aux["gates"] > 0).sum(-1) == 2)
    assert torch.all(aux["gates"].sum(-1) < 1.0)  # the kept gates are the router probabilities, not renormalised


def test_gates_are_the_router_topk():
    attn = MoAWindowAttention(dim=8, num_heads=1, window_size=(2, 2), num_experts=3)
    x = torch.randn(2, 4, 8)
    _, aux = run(attn, x)
    probs = torch.softmax(attn.router(x), -1)
    assert torch.equal(aux["gates"].argmax(-1), probs.argmax(-1))
    assert torch.allclose(aux["gates"].max(-1).values, probs.max(-1).values)


@pytest.mark.parametrize("shifted", [False, True])
def test_sparse_evaluation_equals_the_dense_reference(shifted):
    torch.manual_seed(0)
    window = (2, 2, 2)
    attn = MoAWindowAttention(dim=24, num_heads=2, window_size=window, num_experts=5)
    with torch.no_grad():
        attn.relative_position_bias_table.normal_(0, 0.5)  # MONAI initialises it near zero: make it matter
    mask = compute_mask([4, 4, 4], window, (1, 1, 1), torch.device("cpu")) if shifted else None
    x = torch.randn(2 * 8, 8, 24, requires_grad=True)
    outs, grads = [], []
    for sparse in (True, False):
        attn.sparse = sparse
        attn.zero_grad()
        out, aux = run(attn, x, mask)
        (out.pow(2).mean() + aux["balance"]).backward()
        outs.append(out.detach())
        grads.append([p.grad.clone() for p in attn.parameters()])
    assert torch.allclose(outs[0], outs[1], atol=1e-6)
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-6)


def test_gradients_reach_every_expert_and_the_router():
    attn = MoAWindowAttention(dim=16, num_heads=2, window_size=(3, 3, 3), num_experts=4)
    x = torch.randn(16, 27, 16, requires_grad=True)
    out, aux = run(attn, x)
    (out.pow(2).mean() + aux["balance"] + aux["z"]).backward()
    assert attn.router.weight.grad.abs().sum() > 0
    hd = attn.head_dim
    for e in range(4):
        assert attn.q_proj.weight.grad[e * hd : (e + 1) * hd].abs().sum() > 0, f"no grad for query expert {e}"
        assert attn.o_proj.weight.grad[:, e * hd : (e + 1) * hd].abs().sum() > 0, f"no grad for output expert {e}"
    assert attn.kv_proj.weight.grad.abs().sum() > 0
    assert attn.relative_position_bias_table.grad.abs().sum() > 0


def test_aux_is_only_collected_when_asked():
    attn = MoAWindowAttention(dim=8, num_heads=2, window_size=(2, 2, 2))
    attn(torch.randn(2, 8, 8), None)  # no sink: nothing kept on the module
    assert not [k for k in vars(attn) if k.startswith(("last_", "balance", "z_"))]
    _, aux = run(attn, torch.randn(2, 8, 8))
    assert attn.num_experts == 4
    # a perfectly balanced router gives balance loss 1; it is never below ~1 in expectation
    assert aux["balance"].item() > 0.5 and aux["z"].item() > 0


def test_shifted_window_mask_is_applied():
    window = (2, 2, 2)
    attn = MoAWindowAttention(dim=8, num_heads=1, window_size=window, num_experts=2)
    mask = compute_mask([4, 4, 4], window, (1, 1, 1), torch.device("cpu"))  # (nW, N, N)
    x = torch.randn(2 * mask.shape[0], 8, 8)
    assert not torch.allclose(attn(x, mask), attn(x, None))


def test_invalid_expert_counts():
    with pytest.raises(ValueError, match="num_experts"):
        MoAWindowAttention(dim=8, num_heads=4, window_size=(2, 2), num_experts=2)


@pytest.mark.parametrize("window", [(4, 4, 4), (3, 5), (5, 6, 7)])
def test_relative_position_index_matches_monai_for_the_full_window(window):
    assert torch.equal(relative_position_index(window, window), WindowAttention(8, 2, window).relative_position_index)


@pytest.mark.parametrize("small, full", [((2, 2, 2), (4, 4, 4)), ((2, 3, 1), (4, 4, 4)), ((2, 3), (3, 5))])
def test_a_clamped_window_reads_its_tokens_true_offsets(small, full):
    """Every (query, key) pair of the clamped window must read the table row of its real offset in the full window."""
    index = relative_position_index(small, full)
    coords = torch.stack(torch.meshgrid(*[torch.arange(w) for w in small], indexing="ij")).flatten(1).T
    full_coords = torch.stack(torch.meshgrid(*[torch.arange(w) for w in full], indexing="ij")).flatten(1).T
    full_index = relative_position_index(full, full)
    pos = {tuple(c.tolist()): i for i, c in enumerate(full_coords)}
    for i, ci in enumerate(coords):
        for j, cj in enumerate(coords):
            # the same pair of positions placed inside the full window has the same offset, hence the same row
            assert index[i, j] == full_index[pos[tuple(ci.tolist())], pos[tuple(cj.tolist())]]
    # MONAI's slice of the full index is wrong for this window (the defect fixed here)
    n = index.shape[0]
    assert not torch.equal(index, relative_position_index(full, full)[:n, :n])


def test_attention_uses_the_clamped_window_bias():
    attn = SwinWindowAttention(8, 2, (4, 4, 4))
    with torch.no_grad():
        attn.relative_position_bias_table.normal_()
    attn.set_window((2, 2, 2))
    bias = attn.position_bias(8)
    expected = attn.relative_position_bias_table[relative_position_index((2, 2, 2), (4, 4, 4)).reshape(-1)]
    assert torch.equal(bias, expected.reshape(8, 8, 2).permute(2, 0, 1))
    with pytest.raises(RuntimeError, match="active window"):
        attn.position_bias(27)
    attn.set_window((4, 4, 4))  # with the full window it computes exactly MONAI's attention
    ref = WindowAttention(8, 2, (4, 4, 4))
    ref.load_state_dict(attn.state_dict())
    mask = compute_mask([8, 8, 8], (4, 4, 4), (2, 2, 2), torch.device("cpu"))
    x = torch.randn(2 * mask.shape[0], 64, 8)
    assert torch.allclose(attn(x, mask), ref(x, mask), atol=1e-5)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_moa_stage_reuses_monai_stage_and_clamps_the_window(spatial_dims):
    window = (4,) * spatial_dims
    stage = MoASwinStage(dim=12, depth=2, num_heads=2, window_size=window)
    assert all(isinstance(b.attn, MoAWindowAttention) for b in stage.blocks)
    x = torch.randn(2, 12, *([3] * spatial_dims))  # grid smaller than the window: clamped to 3
    aux = []
    assert stage(x, aux).shape == x.shape
    assert len(aux) == 2 and all(b.attn.active_window == (3,) * spatial_dims for b in stage.blocks)
    assert stage(torch.randn(2, 12, *([5] * spatial_dims))).shape[2:] == (5,) * spatial_dims  # padded by MONAI
    plain = MoASwinStage(dim=12, depth=2, num_heads=2, window_size=window, use_moa=False)
    assert all(type(b.attn) is SwinWindowAttention for b in plain.blocks)
    # same parameters and keys as MONAI's attention, so MONAI Swin weights load
    ref = WindowAttention(12, 2, window, qkv_bias=True)
    assert plain.blocks[0].attn.state_dict().keys() == ref.state_dict().keys()
