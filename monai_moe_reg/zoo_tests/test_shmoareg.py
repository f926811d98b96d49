# Model Zoo unit test for the shmoareg bundle, in <model-zoo>/ci/unit_tests/ beside models/shmoareg
# (written by `monai-moe-reg zoo-export`); run by the zoo's ci/unit_tests/runner.py --b shmoareg.
import os
import sys
import unittest

BUNDLE_ROOT = os.environ.get("ZOO_BUNDLE_ROOT", "models/shmoareg")
TINY = {  # a tiny network and one epoch on the bundle's synthetic 32^3 demo set (generated in a temporary folder)
    "network_def#img_size": 32,
    "network_def#depths": [1, 1],
    "network_def#num_heads": [2, 2],
    "network_def#embed_dim": 12,
    "network_def#conv_channels": [8, 8],
    "network_def#decoder_channels": [8, 8, 16, 16],
    "demo_size": 32,
    "max_epochs": 1,
    "val_interval": 1,
    "num_workers": 0,
}

if BUNDLE_ROOT not in sys.path:
    sys.path = [BUNDLE_ROOT] + sys.path  # the bundle carries the monai_moe_reg package
from monai_moe_reg.zoo import bundle_test_case  # noqa: E402

TestSHMoARegBundle = bundle_test_case(BUNDLE_ROOT, TINY)  # train, train + evaluate, inference, each property-checked


if __name__ == "__main__":
    unittest.main()
