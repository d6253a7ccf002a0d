import pytest
import torch

import lwta_zoo  # noqa: F401  (registers the models and the 'lwta' activation)


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same RNG state, so statistical checks are reproducible."""
    torch.manual_seed(0)
