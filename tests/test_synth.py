"""SynthMorph-style generator, the train_synth.json recipes, and shipped weights (hash-checked safetensors)."""

import shutil
from pathlib import Path

import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigWorkflow
from safetensors.torch import save_file

from monai_moe_reg.weights import default_weights, load_network_weights, shipped_weights
from monai_moe_reg.data import SynthPairs
from monai_moe_reg.engines import WeightsLoader
from monai_moe_reg.losses import SHMoARegLoss
from monai_moe_reg.networks.nets import SHMoAReg

from .conftest import tiny_shmoareg_kwargs

ROOT = Path(__file__).resolve().parents[1]


def test_synth_pairs_deterministic_shapes_and_ranges():
    data = SynthPairs(24, num_labels=6, length=10, seed=3)
    a, b, c = data[4], data[4], data[5]
    assert all(torch.equal(a[k], b[k]) for k in a), "an item is a pure function of (seed, index)"
    assert not torch.equal(a["fixed_image"], c["fixed_image"])
    assert not torch.equal(a["fixed_image"], SynthPairs(24, num_labels=6, length=10, seed=4)[4]["fixed_image"])
    for key in ("moving_image", "fixed_image"):
        assert a[key].shape == (1, 24, 24, 24) and a[key].dtype == torch.float32
        assert float(a[key].min()) >= 0 and float(a[key].max()) <= 1 and float(a[key].std()) > 0.05
    for key in ("moving_label", "fixed_label"):
        assert a[key].shape == (1, 24, 24, 24) and a[key].dtype == torch.int64
        assert 0 <= int(a[key].min()) and int(a[key].max()) < 6 and len(torch.unique(a[key])) >= 3
    # two different deformations of one label map: mostly the same labels, not identical
    differ = float((a["moving_label"] != a["fixed_label"]).float().mean())
    assert 0.02 < differ < 0.8
    assert SynthPairs((20, 28), num_labels=4, length=2)[1]["moving_image"].shape == (1, 20, 28)
    with pytest.raises(IndexError):
        data[10]


def _label_means(image, label, n):
    return torch.stack(
        [image[label == k].mean() if (label == k).any() else torch.tensor(float("nan")) for k in range(n)]
    )


def test_synth_monomodal_shares_contrast_multimodal_does_not():
    def corr(pair, n=8):
        m, f = _label_means(pair["moving_image"], pair["moving_label"], n), _label_means(
            pair["fixed_image"], pair["fixed_label"], n
        )
        ok = ~(m.isnan() | f.isnan())
        return float(torch.corrcoef(torch.stack([m[ok], f[ok]]))[0, 1])

    mono = [corr(SynthPairs(24, 8, 4, seed=1, multimodal=False)[i]) for i in range(4)]
    multi = [corr(SynthPairs(24, 8, 4, seed=1, multimodal=True)[i]) for i in range(4)]
    assert min(mono) > 0.9, mono
    assert sum(multi) / len(multi) < 0.7, multi  # independent intensity draws: unrelated contrasts


@pytest.mark.parametrize(
    "kwargs, match", [({"spatial_size": 4}, "at least 8"), ({"num_labels": 1}, "num_labels"), ({"length": 0}, "length")]
)
def test_synth_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SynthPairs(**{"spatial_size": 16, **kwargs})


def test_shmoareg_loss_label_dice_term():
    pair = SynthPairs(16, num_labels=5, length=1)[0]
    batch = {k: v[None] for k, v in pair.items()}
    loss = SHMoARegLoss(lambda_sim=0.0, lambda_label=1.0, num_classes=5)
    ddf = torch.zeros(1, 3, 16, 16, 16, requires_grad=True)
    terms = loss.batch_loss(batch, ddf)
    assert terms["loss"] > 0 and torch.isclose(terms["loss"], terms["dice"] + 0.01 * terms["reg"])
    terms["loss"].backward()
    assert float(ddf.grad.abs().sum()) > 0, "the label Dice drives the DDF"
    same = {**batch, "moving_label": batch["fixed_label"]}
    assert float(loss.batch_loss(same, torch.zeros(1, 3, 16, 16, 16))["dice"]) < 1e-4
    with pytest.raises(ValueError, match="moving_label and fixed_label"):
        loss.batch_loss({"moving_image": batch["moving_image"], "fixed_image": batch["fixed_image"]}, ddf)


SYNTH_TINY = {
    **{f"network_def#{k}": list(v) if isinstance(v, tuple) else v for k, v in tiny_shmoareg_kwargs().items()},
    "synth_size": [32, 32, 32],
    "synth_labels": 6,
    "epoch_length": 2,
    "val_interval": 1,
    "num_workers": 0,
}


def test_train_synth_recipe_runs_without_data_and_resumes(tmp_path):
    configs = ROOT / "bundles" / "shmoareg" / "configs"
    common = {
        "bundle_root": str(ROOT / "bundles" / "shmoareg"),
        "dataset_dir": str(tmp_path / "nowhere"),
        "ckpt_dir": str(tmp_path / "models"),
        "output_dir": str(tmp_path / "eval"),
        **SYNTH_TINY,
    }

    def run(max_epochs, resume=False):
        wf = ConfigWorkflow(
            config_file=[str(configs / "train.json"), str(configs / "train_synth.json")],
            meta_file=str(configs / "metadata.json"),
            workflow_type="train",
            max_epochs=max_epochs,
            resume=resume,
            **common,
        )
        wf.initialize()
        assert not wf.check_properties()
        epochs = []
        wf.trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: epochs.append(e.state.epoch))
        wf.run()
        return wf, epochs

    wf, epochs = run(1)
    assert epochs == [1] and (tmp_path / "models" / "model.pt").is_file()
    assert not (tmp_path / "nowhere").exists(), "no data is read or written"
    assert "dice" in wf.trainer.state.output and "sim" in wf.trainer.state.output
    val = (tmp_path / "eval" / "val_metrics.csv").read_text().splitlines()
    assert len(val) == 1 + 8  # the fixed synthetic validation set
    _, epochs = run(2, resume=True)
    assert epochs == [2]

    # fine-tuning starts from given weights (here the run's model.pt; the shipped file works the same way)
    saved = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    tune = ConfigWorkflow(
        config_file=[str(configs / "train.json"), str(configs / "train_synth.json")],
        meta_file=str(configs / "metadata.json"),
        workflow_type="train",
        **{**common, "ckpt_dir": str(tmp_path / "tune")},
        pretrained=str(tmp_path / "models" / "model.pt"),
    )
    tune.initialize()
    state = tune.parser.get_parsed_content("network").state_dict()
    assert all(torch.equal(state[k], v) for k, v in saved.items())


def _fake_bundle(tmp_path: Path, state: dict) -> Path:
    bundle = tmp_path / "bundle"
    (bundle / "models").mkdir(parents=True)
    weights = bundle / "models" / "pretrained.safetensors"
    save_file({k: v.half().contiguous() for k, v in state.items()}, str(weights))
    import hashlib

    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    (bundle / "large_files.yml").write_text(
        f'large_files:\n  - path: "models/pretrained.safetensors"\n    url: ""\n    hash_val: "{digest}"\n'
        '    hash_type: "sha256"\n'
    )
    return bundle


def test_shipped_weights_load_verified_and_refused_when_corrupt(tmp_path):
    net = SHMoAReg(**tiny_shmoareg_kwargs())
    bundle = _fake_bundle(tmp_path, net.state_dict())
    weights = shipped_weights(bundle)
    assert weights == bundle / "models" / "pretrained.safetensors"
    assert default_weights(bundle) == str(weights)
    other = SHMoAReg(**tiny_shmoareg_kwargs())
    load_network_weights(other, weights)
    x = torch.rand(1, 2, 32, 32, 32)
    with torch.no_grad():
        assert torch.allclose(other.eval()(x), net.eval()(x).half().float(), atol=1e-2)
    engine_net = SHMoAReg(**tiny_shmoareg_kwargs())
    WeightsLoader(weights, engine_net)(None)
    assert all(torch.equal(u, v) for u, v in zip(engine_net.state_dict().values(), other.state_dict().values()))

    # your own training result wins over the shipped file
    torch.save(net.state_dict(), bundle / "models" / "model.pt")
    assert default_weights(bundle) == str(bundle / "models" / "model.pt")

    digest = (bundle / "large_files.yml").read_text().split('hash_val: "')[1].split('"')[0]
    corrupt = bytearray(weights.read_bytes())
    corrupt[len(corrupt) // 2] ^= 0xFF
    weights.write_bytes(bytes(corrupt))
    with pytest.raises(ValueError, match=rf"pretrained.safetensors.*expects {digest}"):
        load_network_weights(other, weights)

    # a file that matches its hash but not the network: named with its hash
    bundle2 = _fake_bundle(tmp_path / "b2", SHMoAReg(**tiny_shmoareg_kwargs(embed_dim=16)).state_dict())
    with pytest.raises(ValueError, match=r"pretrained.safetensors.*sha256 [0-9a-f]{64}.*does not fit"):
        load_network_weights(other, bundle2 / "models" / "pretrained.safetensors")
    truncated = tmp_path / "truncated.safetensors"
    shutil.copy(bundle2 / "models" / "pretrained.safetensors", truncated)
    truncated.write_bytes(truncated.read_bytes()[:100])
    with pytest.raises(ValueError, match="truncated.safetensors' is not a readable safetensors"):
        load_network_weights(other, truncated)
