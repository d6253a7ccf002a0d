"""Every published entry loads offline (timm and torch.hub) and reproduces the clean accuracy its
model card states on the shipped subset it names (weights not redistributed: once converted)."""
import json
from pathlib import Path

import pytest
import timm
import torch

from lwta_zoo import hub
from lwta_zoo.data import read_npz

ROOT = Path(__file__).resolve().parents[1]
ENTRIES = hub.shipped_weights()


def _subset_clean_results(name):
    """The card's seeded clean accuracies measured on a subset this repo ships (lwta_zoo/data/*.npz; a
    card's larger test sets, such as the 1,000 CIFAR-10 images outside the repo, are not read here)."""
    metrics = json.loads((hub.SHIPPED_WEIGHTS / name / 'config.json').read_text())['metrics']
    return [r for r in metrics['results'] if r['name'].startswith('clean') and 'per_seed' in r
            and Path(r['data'].split(':')[0]).parent == Path('lwta_zoo/data')]


def test_there_are_published_entries():
    assert 'wrn34_1_lwta.authors_pgd' in ENTRIES


@pytest.mark.parametrize('name', ENTRIES)
def test_card_clean_accuracy_reproduces(name, request):
    if hub.conversion(name):
        request.getfixturevalue('authors_weights')  # converted from ../shared/data, else the test skips
    results = _subset_clean_results(name)
    assert results
    for r in results:
        images, y = read_npz(ROOT / r['data'].split(':')[0])
        x = images.float() / 255
        model = hub.load_pretrained(name, samples=r['samples'],
                                    **({'lwta_args': {'eval_tau': r['eval_tau']}} if r['eval_tau'] else {})).eval()
        torch.manual_seed(r['seeds'][0])
        with torch.no_grad():
            accuracy = (model(x).argmax(1) == y).float().mean().item()
        # Same seed, same CPU arithmetic: the card's figure to within 2 of 500 images (other CPUs may
        # round a few borderline logits differently).
        assert accuracy == pytest.approx(r['per_seed'][0], abs=0.004), (r['name'], accuracy)
        if name == 'wrn34_1_lwta.authors_pgd':
            # the WRN paper: 87.0% (L=1, full test set); this JPEG re-encoded subset costs about 1-3 points
            assert 0.82 <= accuracy <= 0.90, accuracy


@pytest.mark.parametrize('name', [n for n in ENTRIES if n.startswith('aistats_')])
def test_torch_hub_and_timm_load_the_same_published_weights(name):
    """torch.hub.load(repo, 'arch.tag', pretrained=True, samples=L) and timm.create_model agree."""
    from_hub = torch.hub.load(str(ROOT), name, source='local', pretrained=True, samples=3)
    from_timm = timm.create_model(name, pretrained=True)
    from lwta_zoo.models.aistats import default_samples
    # the AISTATS networks predict with the paper's S = 5 by default where they are stochastic
    assert from_hub.num_samples == 3 and from_timm.num_samples == default_samples(from_timm.method)
    # the mirror folder's config.json names the classes, as it does for local-dir: and hf-hub:
    assert from_timm.pretrained_cfg['label_names'] == json.loads(
        (hub.SHIPPED_WEIGHTS / name / 'config.json').read_text())['label_names']
    state = from_timm.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in from_hub.state_dict().items())
    assert any(v.abs().sum() > 0 for v in state.values())
