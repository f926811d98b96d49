# Model Zoo unit test for the llm_morph bundle, in <model-zoo>/ci/unit_tests/ beside models/llm_morph
# (written by `monai-moe-reg zoo-export`); run by the zoo's ci/unit_tests/runner.py --b llm_morph after
# verify_bundle.py has downloaded the LLM listed in large_files.yml into models/.
import os
import sys
import unittest

BUNDLE_ROOT = os.environ.get("ZOO_BUNDLE_ROOT", "models/llm_morph")
TINY = {  # the first two LLM layers, small CNN parts and one epoch on the synthetic 32^3 multimodal demo set
    "llm_layers": [0, 1],
    "network_def#lora_rank": 4,
    "network_def#encoder_channels": [8, 8, 16, 16, 16],
    "network_def#decoder_channels": [8, 8, 16, 16, 16],
    "network_def#adapter_channels": 64,
    "demo_size": 32,
    "max_epochs": 1,
    "val_interval": 1,
    "num_workers": 0,
}

if BUNDLE_ROOT not in sys.path:
    sys.path = [BUNDLE_ROOT] + sys.path  # the bundle carries the monai_moe_reg package
from monai_moe_reg.zoo import bundle_test_case  # noqa: E402

TestLLMMorphBundle = bundle_test_case(BUNDLE_ROOT, TINY)  # train, train + evaluate, inference, each property-checked


if __name__ == "__main__":
    unittest.main()
