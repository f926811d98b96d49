"""The Model Zoo unit tests of the two bundles (``test_<bundle>.py``): ``monai-moe-reg zoo-export`` writes them into a
model-zoo checkout's ``ci/unit_tests/``, where the zoo's ``ci/unit_tests/runner.py --b <bundle>`` runs them."""
