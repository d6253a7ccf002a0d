import pytest
import torch

import lwta_zoo  # noqa: F401  (registers the models and the 'lwta' activation)

# The suite's models are small: one intra-op thread is as fast on 2 cores and avoids the
# collapse of OpenMP spinning when other processes load the machine.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same RNG state, so statistical checks are reproducible."""
    torch.manual_seed(0)
