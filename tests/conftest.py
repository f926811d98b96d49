import warnings

import pytest
import torch

warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    torch.set_num_threads(2)
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
