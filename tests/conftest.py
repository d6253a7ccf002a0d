import os
import shutil
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch

import lwta_zoo  # noqa: F401  (registers the models and the 'lwta' activation)
from lwta_zoo import hub

# The suite's models are small: one intra-op thread is as fast on 2 cores and avoids the
# collapse of OpenMP spinning when other processes load the machine.
torch.set_num_threads(1)

AUTHORS = 'wrn34_1_lwta.authors_pgd'
# ../shared/data beside the clone (as CI has it) holds the authors' checkpoint, which lwta_zoo does not
# redistribute; LWTA_ZOO_SHARED_DATA points elsewhere (a missing folder: the tests that need it skip).
SHARED_DATA = Path(os.environ.get('LWTA_ZOO_SHARED_DATA', Path(__file__).resolve().parents[2] / 'shared' / 'data'))
AUTHORS_CHECKPOINT = SHARED_DATA / 'authors_wrn34_1_lwta_cifar10_pgd.pt'


def pytest_collection_modifyitems(items: list) -> None:
    """Mark the tests that need the authors' checkpoint (``-m authors_checkpoint`` selects them): those
    that use its fixture, and those run on a published name that only it converts."""
    for item in items:
        params = getattr(getattr(item, 'callspec', None), 'params', {}).values()
        if 'authors_mirror' in getattr(item, 'fixturenames', ()) or any(
                isinstance(p, str) and hub.conversion(p) for p in params):
            item.add_marker(pytest.mark.authors_checkpoint)


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same RNG state, so statistical checks are reproducible, and on one
    thread (a test that trains with train.threads may have changed it)."""
    torch.manual_seed(0)
    torch.set_num_threads(1)


@pytest.fixture(scope='session')
def authors_mirror(tmp_path_factory) -> Path:
    """A $LWTA_ZOO_WEIGHTS folder holding the authors' weights, converted (and checksum-checked) by
    ``lwta-zoo import`` from the checkpoint in ../shared/data; the test skips where it is absent."""
    if not AUTHORS_CHECKPOINT.is_file():
        pytest.skip(f"{AUTHORS_CHECKPOINT} not present: the authors' weights are not redistributed, "
                    'and only their checkpoint converts them')
    mirror = tmp_path_factory.mktemp('weights')
    hub.import_checkpoint(AUTHORS_CHECKPOINT, AUTHORS, mirror / AUTHORS, layout='authors-lwta')
    return mirror


@pytest.fixture
def authors_weights(authors_mirror, monkeypatch) -> Path:
    """The converted authors' weights, found by ``pretrained=True`` through $LWTA_ZOO_WEIGHTS; their folder."""
    monkeypatch.setenv(hub.MIRROR_ENV, str(authors_mirror))
    return authors_mirror / AUTHORS


@pytest.fixture
def fresh_clone(monkeypatch, tmp_path) -> Path:
    """The weights lookup of a fresh clone, offline: lwta_zoo/weights/ as committed (any authors' weights
    converted into it left out), no $LWTA_ZOO_WEIGHTS, an empty HF cache; returns that weights folder."""
    shipped = tmp_path / 'weights'
    shutil.copytree(hub.SHIPPED_WEIGHTS, shipped, copy_function=os.symlink,
                    ignore=lambda folder, names: [hub.WEIGHTS_FILE] if hub.conversion(Path(folder).name) else [])
    monkeypatch.setattr(hub, 'SHIPPED_WEIGHTS', shipped)
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_CACHE', str(tmp_path / 'hf-cache'))
    monkeypatch.delenv(hub.MIRROR_ENV, raising=False)
    return shipped


@pytest.fixture(scope='session')
def browser():
    """Headless Chromium (Debian's package) through Selenium, with its network log; skips where it is not installed."""
    chromium = shutil.which('chromium') or shutil.which('chromium-browser')
    if chromium is None:
        pytest.skip('chromium is not installed (Debian: apt-get install chromium chromium-driver, as README\'s test command does)')
    driver_path = shutil.which('chromedriver')
    assert driver_path, 'chromium is installed but not its WebDriver (Debian: apt-get install chromium-driver)'
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ('--headless=new', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'):
        options.add_argument(arg)
    options.set_capability('goog:loggingPrefs', {'performance': 'ALL'})
    driver = webdriver.Chrome(options=options, service=Service(driver_path))  # no Selenium Manager download
    yield driver
    driver.quit()
