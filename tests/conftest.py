import warnings

import pytest
import torch

warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    torch.set_num_threads(2)
    yield


@pytest.fixture(autouse=True)
def _work_dir(tmp_path_factory, monkeypatch):
    """Bundle runs write to their work folder (monai_moe_reg.bundles.work_dir): a temporary one per test, never
    the user's cache (subprocesses inherit it)."""
    monkeypatch.setenv("MONAI_MOE_REG_WORK_DIR", str(tmp_path_factory.mktemp("work")))
    yield


def tiny_shmoareg_kwargs(**overrides):
    """A tiny SHMoAReg (stride 8) for fast CPU tests."""
    kw = dict(
        img_size=32,
        depths=(1, 1),
        num_heads=(2, 2),
        embed_dim=12,
        conv_channels=(8, 8),
        decoder_channels=(8, 8, 16, 16),
    )
    kw.update(overrides)
    return kw


TINY_LLM_MORPH = dict(encoder_channels=(8, 8, 16, 16, 16), decoder_channels=(8, 8, 16, 16, 16), adapter_channels=64)


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory):
    """A random tiny LLaMA (8 layers) saved as two safetensors shards, shared by the LLM-Morph tests."""
    from .llm_fixtures import write_sharded_llama

    folder = tmp_path_factory.mktemp("llm") / "tiny_llama"
    write_sharded_llama(folder, num_layers=8)
    return folder
