import pytest
import torch
from monai.networks.blocks import Warp

from monai_moe_reg.data import synthetic_pair
from monai_moe_reg.llm import load_decoder_layers
from monai_moe_reg.losses import LLMMorphLoss, MINDSSCLoss, mind_ssc
from monai_moe_reg.metrics import dice_per_label
from monai_moe_reg.networks.blocks import DualPyramidEncoder, LLMEncodingBlock, LLMMorphDecoder, TokenAdapter
from monai_moe_reg.networks.nets import LLMMorph

from .conftest import TINY_LLM_MORPH as TINY


def test_token_adapter_shapes():
    adapter = TokenAdapter(10, 32)
    assert adapter(torch.randn(2, 7, 10)).shape == (2, 7, 32)


def test_leb_freezes_base_trains_lora_and_attention_is_bidirectional(llama_dir):
    loaded = load_decoder_layers(llama_dir, (3,))
    leb = LLMEncodingBlock(12, loaded.layers[0], loaded.rotary, lora_rank=4)
    trainable = {n for n, p in leb.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("adapter.") for n in trainable)
    lora_targets = {t for n in trainable if "lora_" in n for t in ("q_proj", "k_proj", "v_proj", "o_proj") if f".{t}." in n}
    assert lora_targets == {"q_proj", "k_proj", "v_proj"}
    base = {n: p.detach().clone() for n, p in leb.layer.named_parameters() if "lora_" not in n}
    tokens = torch.randn(2, 9, 12)
    out = leb(tokens)
    assert out.shape == (2, 9, 32)
    opt = torch.optim.SGD([p for p in leb.parameters() if p.requires_grad], lr=0.5)
    for _ in range(2):  # LoRA B starts at zero: the second step also moves A
        opt.zero_grad()
        leb(tokens).pow(2).mean().backward()
        opt.step()
    for n, p in leb.layer.named_parameters():
        if "lora_" not in n:
            assert torch.equal(p, base[n]), f"frozen weight {n} changed"
    assert any(p.abs().sum() > 0 for n, p in leb.layer.named_parameters() if "lora_B" in n)

    # bidirectional: the first token sees the last one; causal: it does not
    changed = tokens.clone()
    changed[:, -1] += 1.0
    leb.eval()
    with torch.no_grad():
        bi = leb(tokens)
        assert not torch.allclose(bi[:, 0], leb(changed)[:, 0])
        leb.causal = True
        ca = leb(tokens)
        assert not torch.allclose(ca, bi)
        # LoRA/adapter identical: only the mask differs. First token output independent of the (changed) last one
        # up to the instance norm in the adapter, which mixes tokens; compare with the adapter output fixed instead.
        hidden = leb.adapter(tokens)
        pos = torch.arange(9)[None].expand(2, -1)
        cos, sin = leb.rotary(hidden, pos)
        mask = torch.triu(torch.full((9, 9), torch.finfo(hidden.dtype).min), 1)[None, None].expand(2, 1, 9, 9)
        h2 = hidden.clone()
        h2[:, -1] += 1.0
        a = leb.layer(hidden, attention_mask=mask, position_ids=pos, position_embeddings=(cos, sin))
        b = leb.layer(h2, attention_mask=mask, position_ids=pos, position_embeddings=(cos, sin))
        assert torch.allclose(a[:, 0], b[:, 0], atol=1e-6)


def test_llm_morph_forward_backward_and_what_trains(llama_dir):
    net = LLMMorph(str(llama_dir), llm_layers=(2, 5), lora_rank=4, **TINY)
    x = torch.rand(1, 2, 35, 40, 33)
    ddf = net(x)
    assert ddf.shape == (1, 3, 35, 40, 33)
    frozen = {n: p.detach().clone() for n, p in net.named_parameters() if not p.requires_grad}
    assert frozen and all(".layer." in n and "lora_" not in n for n in frozen)
    for n, p in net.named_parameters():
        if p.requires_grad:
            assert n.startswith(("encoder_", "decoder.", "decoder_adapters.", "lebs.")), n
            if n.startswith("lebs.") and ".layer." in n:
                assert "lora_" in n, n
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-2)
    ddf.pow(2).mean().backward()
    opt.step()
    for n, p in net.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n])
    grads = [n for n, p in net.named_parameters() if p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0]
    # LoRA B starts at zero, so at the first step only B (not A) receives a gradient
    assert any("lora_B" in n for n in grads) and any(n.startswith("decoder_adapters.") for n in grads)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(num_lebs=0),
        dict(num_lebs=1),
        dict(lora_rank=0),
        dict(leb_type="vit", hidden_size=32, vit_heads=4),
        dict(half_resolution=True),
        dict(causal=True, share_encoder=False),
        dict(design="pyramid"),
        dict(design="pyramid", num_lebs=0),
    ],
)
def test_ablation_flags_build_and_run(llama_dir, kwargs):
    llm = None if kwargs.get("leb_type") == "vit" or kwargs.get("num_lebs") == 0 else str(llama_dir)
    net = LLMMorph(llm, llm_layers=(2, 5), **TINY, **kwargs)
    ddf = net(torch.rand(1, 2, 32, 32, 32))
    assert ddf.shape == (1, 3, 32, 32, 32)
    ddf.mean().backward()
    if kwargs.get("lora_rank") == 0:
        assert not any("lora_" in n for n, _ in net.named_parameters())
    if kwargs.get("num_lebs") == 0:
        assert len(net.lebs) == 0 and len(net.decoder_adapters) == 0
    if kwargs.get("num_lebs") == 1:
        assert len(net.lebs) == 1


def test_dual_pyramid_encoder_top_down_pathway():
    enc = DualPyramidEncoder(3, 1, (4, 6, 8, 8, 10))
    x = torch.rand(2, 1, 32, 32, 32, requires_grad=True)
    feats = enc(x)
    assert [tuple(f.shape) for f in feats] == [(2, c, 32 // 2**i, 32 // 2**i, 32 // 2**i)
                                               for i, c in enumerate((4, 6, 8, 8, 10))]
    # top-down: the full-resolution output merges the upsampled coarser outputs (Dual-PRNet), so it depends on the
    # 1/16 bottom-up feature, and the coarsest output is the 1/16 bottom-up feature itself
    assert enc.up[0].conv.in_channels == 4 + 6 and len(enc.up) == 4
    bottom = enc.bottom_up.levels[4]
    hook = bottom.register_forward_hook(lambda m, i, o: o.retain_grad() or setattr(m, "out", o))
    feats = enc(x)
    hook.remove()
    feats[0].sum().backward()
    assert bottom.out.grad is not None and bottom.out.grad.abs().sum() > 0


def test_paper_design_stages_weight_sharing_and_flow_levels(llama_dir):
    net = LLMMorph(str(llama_dir), llm_layers=(2, 5), lora_rank=4, **TINY)
    assert net.design == "paper" and net.encoder_fixed is None  # one weight-shared DualPyramid for both images
    assert isinstance(net.encoder_moving, DualPyramidEncoder) and isinstance(net.decoder, LLMMorphDecoder)
    dec = net.decoder
    assert len(dec.fuse) == 4 and len(dec.heads) == 3  # S4 fuses only; S3, S2, S1 produce fields
    adapters = [a.out_channels for a in reversed(net.decoder_adapters)]  # levels 0..3
    for lv in range(4):  # F_j + Fm_j + Ff_j (+ up(F'_{j+1})) (+ warped moving image + upsampled field at S2, S1)
        expected = adapters[lv] + 2 * TINY["encoder_channels"][lv] + (TINY["decoder_channels"][lv + 1] if lv < 3 else 0)
        expected += (1 + 3) if lv < 2 else 0
        assert dec.fuse[lv].conv.in_channels == expected, lv
    sizes, warped = [], []
    hooks = [h.register_forward_hook(lambda m, i, o: sizes.append(tuple(o.shape[2:]))) for h in dec.heads]
    hooks.append(dec.warp.register_forward_hook(lambda m, i, o: warped.append(tuple(o.shape[1:]))))
    x = torch.rand(1, 2, 32, 32, 32)
    ddf = net(x)
    for h in hooks:
        h.remove()
    assert sizes == [(8, 8, 8), (16, 16, 16), (32, 32, 32)]  # fields at 1/4 (S3), 1/2 (S2), full (S1)
    assert warped == [(1, 16, 16, 16), (1, 32, 32, 32)]  # the moving *image* is warped at 1/2 and full resolution
    assert ddf.shape == (1, 3, 32, 32, 32)
    # weight sharing: the same image gives the same features in either stream
    moving, fixed = torch.rand(1, 1, 32, 32, 32), torch.rand(1, 1, 32, 32, 32)
    feats = net.encoder_moving(torch.cat([moving, fixed]))
    alone = net.encoder_moving(fixed)
    assert all(torch.allclose(f[1:], a, atol=1e-5) for f, a in zip(feats, alone))


def test_llm_none_needs_an_explicit_ablation_and_other_bad_arguments(llama_dir):
    with pytest.raises(ValueError, match="explicit ablation"):
        LLMMorph(None, **TINY)
    with pytest.raises(ValueError, match="num_lebs"):
        LLMMorph(str(llama_dir), num_lebs=3, **TINY)
    with pytest.raises(ValueError, match="design"):
        LLMMorph(str(llama_dir), design="unet", **TINY)
    with pytest.raises(ValueError, match="adapter_channels"):
        LLMMorph(None, num_lebs=0, encoder_channels=TINY["encoder_channels"], adapter_channels=100)
    with pytest.raises(IndexError, match="out of range"):
        LLMMorph(str(llama_dir), llm_layers=(15, 16), **TINY)
    net = LLMMorph(None, num_lebs=0, **TINY)
    for bad, match in [
        (torch.rand(1, 3, 32, 32, 32), "2 channels"),
        (torch.rand(1, 2, 32, 32), "3 spatial dims"),
        (torch.full((1, 2, 32, 32, 32), float("nan")), "NaN"),
        (torch.rand(0, 2, 32, 32, 32), "empty input"),
        (torch.rand(1, 2, 32, 32, 32) * 3e38, "non-finite displacement field"),
    ]:
        with pytest.raises(ValueError, match=match):
            net(bad)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_amp_forward_backward(llama_dir, dtype):
    # 48^3, not 32^3: PyTorch's CPU bfloat16 Conv3d weight gradient is intermittently NaN when the input grid is
    # 2x2x2 (the 1/16 level of a 32^3 volume; reproduced with a bare nn.Conv3d, ~10 % of calls under AVX2).
    torch.manual_seed(0)
    net = LLMMorph(str(llama_dir), llm_layers=(2, 5), lora_rank=4, **TINY)
    pair = synthetic_pair((48, 48, 48), seed=3)
    x = torch.cat([pair["moving_image"], pair["fixed_image"]], 0)[None]
    with torch.autocast("cpu", dtype=dtype):
        ddf = net(x)
        loss = LLMMorphLoss(num_classes=6)(ddf, pair["moving_label"][None], pair["fixed_label"][None])["loss"]
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)


def test_losses():
    pair = synthetic_pair((24, 24, 24), seed=4)
    ddf = torch.zeros(1, 3, 24, 24, 24)
    loss = LLMMorphLoss(num_classes=6, image_similarity="mind")
    terms = loss(ddf, pair["moving_label"][None], pair["fixed_label"][None], pair["moving_image"][None],
                 pair["fixed_image"][None])
    assert set(terms) == {"loss", "reg", "dice", "image"} and terms["reg"] == 0
    same = LLMMorphLoss(num_classes=6)(ddf, pair["fixed_label"][None], pair["fixed_label"][None])
    assert same["dice"] < 1e-3
    multichannel = (torch.rand(1, 3, 24, 24, 24) > 0.5).float()
    assert LLMMorphLoss()(ddf, multichannel, multichannel)["dice"] < 1e-3
    mi = LLMMorphLoss(lambda_label=0, image_similarity="mi")(ddf, moving_image=pair["moving_image"][None],
                                                            fixed_image=pair["fixed_image"][None])
    assert torch.isfinite(mi["loss"])
    # integer maps are scored over the ids present in either map: num_classes only bounds the ids
    bounded = LLMMorphLoss(num_classes=6)(ddf, pair["moving_label"][None], pair["fixed_label"][None])["dice"]
    assert torch.isclose(LLMMorphLoss()(ddf, pair["moving_label"][None], pair["fixed_label"][None])["dice"], bounded)
    with pytest.raises(ValueError, match="0..1"):
        LLMMorphLoss(num_classes=2)(ddf, pair["moving_label"][None], pair["fixed_label"][None])
    with pytest.raises(ValueError, match="image_similarity"):
        LLMMorphLoss(image_similarity="ncc")


def test_mind_ssc_is_modality_independent():
    img = torch.nn.functional.avg_pool3d(torch.rand(1, 1, 20, 20, 20), 3, 1, 1)
    desc = mind_ssc(img)
    assert desc.shape == (1, 12, 20, 20, 20)
    assert torch.allclose(desc, mind_ssc(1.0 - 2.0 * img), atol=1e-5)  # invariant to inversion and contrast
    loss = MINDSSCLoss()
    assert loss(img, 1.0 - img) < 1e-6 < loss(img, torch.roll(img, 3, 2))


def test_overfits_a_synthetic_multimodal_pair(llama_dir):
    """Tiny LLM-Morph, same label map with two intensity mappings and a known deformation: Dice rises >= 0.15."""
    pair = synthetic_pair((32, 32, 32), max_disp=6.0, multimodal=True, seed=2)
    moving, fixed = pair["moving_image"][None], pair["fixed_image"][None]
    assert not torch.allclose(moving, fixed)
    net = LLMMorph(str(llama_dir), llm_layers=(2, 5), lora_rank=4, **TINY)
    loss_fn = LLMMorphLoss(num_classes=6)
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=3e-3)
    warp = Warp(mode="nearest", padding_mode="zeros")

    def dice():
        with torch.no_grad():
            ddf = net(torch.cat([moving, fixed], 1))
        warped = warp(pair["moving_label"][None].float(), ddf).long()
        return dice_per_label(warped, pair["fixed_label"][None]).nanmean().item()

    before = dice()
    for _ in range(40):
        ddf = net(torch.cat([moving, fixed], 1))
        loss = loss_fn(ddf, pair["moving_label"][None], pair["fixed_label"][None])["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = dice()
    assert after >= before + 0.15, (before, after)


def test_checkpoint_holds_only_trained_weights_and_scripts_for_any_size(llama_dir):
    """state_dict() leaves out the frozen LLM layers (they come from the LLM file): strict loading of such a
    checkpoint, and of an older one that includes them, both work; torch.jit.script gives a module for any size."""
    net = LLMMorph(str(llama_dir), llm_layers=(2, 5), lora_rank=4, export_size=32, flow_init_std=0.05, **TINY).eval()
    state = net.state_dict()
    frozen = {n for n, p in net.named_parameters() if not p.requires_grad}
    assert frozen and not frozen & set(state), "frozen LLM weights are not saved"
    assert {n for n, p in net.named_parameters() if p.requires_grad} <= set(state)
    other = LLMMorph(str(llama_dir), llm_layers=(2, 5), lora_rank=4, export_size=32, **TINY).eval()
    other.load_state_dict(state, strict=True)
    full = {**state, **{n: p.detach() for n, p in net.named_parameters() if not p.requires_grad}}
    other.load_state_dict(full, strict=True)  # an older checkpoint with the frozen weights
    x = torch.rand(1, 2, 32, 32, 32)
    with torch.no_grad():
        assert torch.equal(other(x), net(x))
        scripted = torch.jit.script(net)
        y = torch.rand(1, 2, 32, 32, 32) * 2  # not the traced example: the trace replays any input at its grid
        assert torch.allclose(scripted(y), net(y), atol=1e-5)
        assert scripted(torch.rand(1, 2, 40, 24, 36)).shape == (1, 3, 40, 24, 36)
    assert not net.training and net.check_values


def test_weights_know_their_llm_and_are_refused_by_a_network_on_other_layers(llama_dir, tmp_path):
    """Issue 22: saved weights record the LLM (source name, layer indices, a hash of those layers' weights); loading
    them into a network built on another LLM's layers, or on other layers, is an error naming both."""
    import json

    from monai_moe_reg.llm import load_decoder_layers, llm_provenance
    from monai_moe_reg.networks.config import network_config
    from monai_moe_reg.weights import load_network_weights

    from .llm_fixtures import write_sharded_llama

    net = LLMMorph(str(llama_dir), llm_layers=(2, 5), lora_rank=4, **TINY)
    llm = network_config(net)["llm"]
    assert llm["name"] == llama_dir.name and llm["layers"] == [2, 5] and len(llm["sha256"]) == 64
    bf16 = llm_provenance(load_decoder_layers(str(llama_dir), (2, 5), dtype=torch.bfloat16))
    assert bf16 == llm, "the hash does not depend on llm_dtype"
    weights = tmp_path / "model.pt"
    torch.save(net.state_dict(), weights)
    weights.with_name("model.pt.json").write_text(json.dumps({"network": network_config(net)}))
    load_network_weights(LLMMorph(str(llama_dir), llm_layers=(2, 5), lora_rank=4, **TINY), weights)

    other_llm = tmp_path / "tiny_llama"  # the same name and architecture, other weights
    write_sharded_llama(other_llm, num_layers=8, seed=1)
    for other, what in ((LLMMorph(str(other_llm), llm_layers=(2, 5), lora_rank=4, **TINY), r"\(2, 5\)"),
                        (LLMMorph(str(llama_dir), llm_layers=(3, 4), lora_rank=4, **TINY), r"\(3, 4\)")):
        with pytest.raises(ValueError, match=r"other network settings \(.*llm: tiny_llama layers \(2, 5\) "
                           r"\(weights sha256 " + llm["sha256"][:12] + r"\) -> tiny_llama layers " + what):
            load_network_weights(other, weights)
