"""The robust-accuracy estimator: calibrated against noise, independent draws, threat models,
intervals in the report and the cards, AutoAttack on every example, CW's budget, presets."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy.stats import chi2_contingency

import lwta_zoo
from lwta_zoo import hub
from lwta_zoo.attacks.pgd import gradient_surrogate
from lwta_zoo.attacks.autoattack import apgd_every_example, autoattack
from lwta_zoo.attacks.cw import cw_l2
from lwta_zoo.attacks.suite import (card_results, evaluate, markdown_table, null_attack, score, select, suite,
                                    wilson)
from lwta_zoo.data import read_npz
from lwta_zoo.layers.ibp import IBPConv2d, IBPLinear, independent_copies
from lwta_zoo.layers.lwta import lwta_modules
from toy import fit
from pyautoattack.autopgd_base import APGDAttack

ROOT = Path(__file__).resolve().parents[1]
SUBSET = ROOT / 'lwta_zoo/data/fashion_mnist_test_500.npz'
LWTA, IBP = 'aistats_softmax_mnist.lwta_u2_fmnist_pgd', 'aistats_softmax_mnist.lwta_ibp_u2_fmnist_pgd'



def _fmnist(n: int) -> tuple:
    images, labels = read_npz(SUBSET)
    index = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))[:n]
    return images[index].float() / 255, labels[index]


@pytest.mark.parametrize('name', [LWTA, IBP])
def test_null_attacks_leave_the_worst_case_at_clean_accuracy(name):
    """Calibration: attacks that return the input cannot lower robust accuracy, so the worst case
    must equal clean accuracy within the intervals. The old rule (the same draws choose and score,
    AND over clean and every attack) fails this on the same data: noise alone lowers it."""
    x, y = _fmnist(200)
    model = hub.load_pretrained(name, samples=1).eval()  # one sample a prediction: the noisiest case
    nulls = [null_attack(f'null{i}') for i in range(6)]
    report = evaluate(model, x, y, nulls, repeats=1, batch_size=200, random_inputs=0, progress=False)
    clean, worst = report['clean'], report['worst_case']
    assert worst['attacks'] == [a.name for a in nulls] and worst['n'] == clean['n'] == 200
    assert clean['interval'][0] <= worst['accuracy'] <= clean['interval'][1]
    assert worst['interval'][0] <= clean['accuracy'] <= worst['interval'][1]
    for attack in report['attacks'].values():
        assert clean['interval'][0] <= attack['accuracy'] <= clean['interval'][1]
    old = report['previous_rule']['worst_case_accuracy']['Linf@0']
    assert old < clean['interval'][0], (old, clean)  # the old rule: 11-19 points low here


def _max_mode(model: nn.Module) -> nn.Module:
    for m in lwta_modules(model):
        m.mode = 'max'  # only the IBP masks stay random
    return model


def test_folded_predictions_draw_independent_masks_like_separate_forwards():
    """R predictions folded into one forward: the count of correct ones per example has the
    distribution of R separate forwards (with one shared mask it would be all-or-nothing)."""
    x, y = _fmnist(120)
    model = _max_mode(hub.load_pretrained(IBP, samples=1).eval())
    R = 5
    torch.manual_seed(0)
    folded = np.array(score(model, x, y, R)['sel'])
    torch.manual_seed(1)
    with torch.no_grad():
        separate = sum((model(x).argmax(1) == y).long() for _ in range(R)).numpy()
    hist = np.stack([np.bincount(folded, minlength=R + 1), np.bincount(separate, minlength=R + 1)])
    assert hist[0, 1:R].sum() >= 0.5 * hist[1, 1:R].sum() > 10, hist  # shared masks: hist[0, 1:R] == 0
    keep = hist.sum(0) > 0
    assert chi2_contingency(hist[:, keep])[1] > 0.01, hist


@pytest.mark.parametrize('layer', [IBPLinear(6, 8, U=2), IBPConv2d(3, 4, 3, U=2, padding=1)])
def test_each_folded_copy_is_the_layer_with_its_own_mask(layer):
    layer.eval()
    nn.init.zeros_(layer.ibp.pi_logit)  # keep probability 1/2: masks that differ
    x = torch.rand(5, 6) if isinstance(layer, IBPLinear) else torch.rand(5, 3, 4, 4)
    copies = 3
    torch.manual_seed(0)
    with independent_copies(len(x)), torch.no_grad():
        out = layer(x.repeat(copies, *[1] * (x.dim() - 1)))
    torch.manual_seed(0)
    masks = layer.ibp(copies)  # the same draw, one mask a copy
    for c, z in enumerate(masks):
        if isinstance(layer, IBPLinear):
            expected = F.linear(x, layer.weight * z.repeat_interleave(2, dim=1).t(), layer.bias)
        else:
            z = z.repeat_interleave(2)
            expected = layer._conv_forward(x, layer.weight * z.view(-1, 1, 1, 1), layer.bias * z)
        assert torch.allclose(out[c * len(x):(c + 1) * len(x)], expected, atol=1e-6)
    assert not torch.equal(masks[0], masks[1])
    with independent_copies(len(x)), independent_copies(2 * len(x)):  # nested: the finest block wins
        assert layer.ibp(copies).shape[0] == copies


def _saturated_mlp() -> tuple:
    """An undefended MLP on 8x8 images with a third of the pixels exactly 0 or 1 (as in MNIST)."""
    g = torch.Generator().manual_seed(0)
    templates = torch.rand(4, 64, generator=g) * 0.6 + 0.2
    saturated = torch.rand(64, generator=g) < 0.33
    templates[:, saturated] = 0.0

    def task(n: int, seed: int) -> tuple:
        gen = torch.Generator().manual_seed(seed)
        y = torch.randint(0, 4, (n,), generator=gen)
        x = (templates[y] + 0.1 * torch.randn(n, 64, generator=gen)).clamp(0, 1)
        return torch.where(saturated, templates[y], x).view(n, 1, 8, 8), y

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 4))
    return fit(model, *task(256, 1)), *task(8, 2)


def test_cw_at_its_default_budget_fools_an_undefended_network():
    """The suite's CW (the AISTATS paper's lr 1e-3, 10 binary steps, 1000 steps each) fools an
    undefended network; the budget the old reports used (100 x 5) leaves it standing."""
    model, x, y = _saturated_mlp()
    assert (model(x).argmax(1) == y).all()
    cw = select(suite('mnist'), ['aistats_cw'])[0]
    assert (cw.settings['steps'], cw.settings['binary_search_steps']) == (1000, 10)
    x_adv = cw.run(model, x, y, 0)
    assert (model(x_adv).argmax(1) != y).float().mean() >= 0.75
    assert (model(cw_l2(model, x, y, steps=100, binary_search_steps=5)).argmax(1) == y).float().mean() >= 0.75


def test_cw_on_the_mean_surrogate_is_not_stopped_by_noise():
    """CW's success test trusts one forward: on a stochastic model (the MLP converted to LWTA) it keeps inputs that
    noise misclassified once, which the noise-free surrogate and fresh predictions still classify correctly. The
    suite's adaptive L2 attack, cw_mean, runs CW on the mean surrogate: what it returns, the surrogate misclassifies,
    and fresh stochastic predictions mostly do too."""
    relu, x, y = _saturated_mlp()
    model = lwta_zoo.convert(relu).eval()
    attack = select(suite('mnist'), ['cw_mean'])[0]
    assert (attack.protocol, attack.threat_model, attack.settings['gradient']) == ('adaptive', 'L2', 'mean')
    assert (attack.settings['steps'], attack.settings['binary_search_steps']) == (1000, 10)
    assert {'cw_mean'} <= {a.name for a in select(suite('mnist'), preset='adaptive')}
    outputs = {}
    for gradient in ('model', 'mean'):  # a larger lr than the suite's, so that 100 x 5 steps reach the boundary
        torch.manual_seed(0)
        outputs[gradient] = cw_l2(model, x, y, steps=100, binary_search_steps=5, lr=0.01, gradient=gradient)
    with torch.no_grad(), gradient_surrogate(model, 'mean'):
        surrogate_correct = {g: model(x_adv).argmax(1) == y for g, x_adv in outputs.items()}
    fresh = {g: torch.tensor(score(model, x_adv, y, repeats=5)['ev']) for g, x_adv in outputs.items()}
    moved = (outputs['mean'] - x).flatten(1).norm(dim=1) > 0
    assert moved.all() and not surrogate_correct['mean'].any()
    assert surrogate_correct['model'].float().mean() >= 0.5, 'CW on the model stops where noise fooled it once'
    assert (fresh['mean'] >= 3).sum() < (fresh['model'] >= 3).sum()
    with pytest.raises(ValueError, match='not .eot.'):
        cw_l2(model, x, y, steps=1, gradient='eot')


def test_autoattack_attacks_every_example_and_reports_its_parts():
    """pyautoattack skips examples a clean forward gets wrong; here every one is attacked, and
    AutoAttack 'rand' returns APGD-CE and APGD-DLR (with EoT) separately."""
    model, x, y = _saturated_mlp()
    y = y.clone()
    y[:3] = (y[:3] + 1) % 4  # misclassified from the start: pyautoattack would return these unchanged
    attack = APGDAttack(model, n_iter=5, eps=0.05, seed=0, device=x.device)
    x_adv = apgd_every_example(attack, x, y)
    moved = (x_adv - x).flatten(1).abs().amax(1)
    assert (moved > 0).all() and (moved <= 0.05 + 1e-6).all()
    rand = next(a for a in suite('mnist') if a.name == 'autoattack_rand')
    assert rand.settings['eot_iter'] == 20 and rand.eps == 0.3
    parts = autoattack(model, x[:2], y[:2], eps=0.05, version='rand', seed=0)
    assert set(parts) == {'apgd-ce', 'apgd-dlr'}
    assert all((p - x[:2]).abs().amax() <= 0.05 + 1e-6 for p in parts.values())


def test_report_rows_carry_threat_model_interval_and_n(tmp_path):
    model, x, y = _saturated_mlp()
    attacks = [a for a in suite('mnist', cw_steps=5, cw_binary_steps=1) if a.name in ('pgd20', 'aistats_cw')]
    attacks.append(next(a for a in suite('mnist') if a.name == 'autoattack_rand'))
    attacks[-1] = dataclasses.replace(attacks[-1], run=lambda m, xb, yb, s: {'a': xb, 'b': xb})  # two parts, cheap
    report = evaluate(model, x, y, attacks, repeats=3, batch_size=8, random_inputs=0, output=tmp_path,
                      progress=False, meta={'data': 'toy', 'command': 'pytest'})
    rows = {r['name']: r for r in card_results(report, 'exact samples')}
    for r in rows.values():
        assert {'name', 'value', 'threat_model', 'eps', 'examples', 'repeats', 'samples', 'eval_tau', 'interval',
                'interval_method', 'rule', 'data', 'command'} <= set(r)
        assert r['examples'] == 8 and r['repeats'] == 3 and r['interval'][0] <= r['value'] <= r['interval'][1]
    assert rows['clean accuracy (exact samples)']['threat_model'] is None
    assert rows['aistats_cw robust accuracy (exact samples)']['threat_model'] == 'L2'
    assert 'autoattack_rand a robust accuracy (exact samples)' in rows
    worst = [r for n, r in rows.items() if n.startswith('worst-case')]
    assert {(r['threat_model'], r['eps']) for r in worst} == {('Linf', 0.3), ('L2', None)}
    linf = next(r for r in worst if r['threat_model'] == 'Linf')
    assert set(linf['over']) == {'pgd20', 'autoattack_rand'}
    low, high = wilson(int(round(8 * report['clean_accuracy'])), 8)
    assert f"{100 * report['clean_accuracy']:.1f} [{100 * low:.1f}, {100 * high:.1f}]" in markdown_table(report)


def test_reports_written_before_the_estimator_still_read():
    """A report of format 1 (the previous rule; here the ReLU model's papers report as shipped before its
    re-run) still makes card rows and a table, marked with its rule."""
    report = json.loads((ROOT / 'tests/data/report_format1.json').read_text())
    assert 'format' not in report
    rows = card_results(report, 'old')
    assert rows[0]['value'] == report['clean_accuracy'] and rows[-1]['value'] == report['worst_case_accuracy']
    assert all(r['rule'] == report['rule'] for r in rows)
    assert '| **worst case** |' in markdown_table(report)


def test_presets():
    mnist, cifar = suite('mnist'), suite('cifar10')
    default = {a.name for a in select(cifar, preset='default')}
    assert {'pgd_mean', 'apgd_mean', 'pgd_ste'} <= default and not default & {'autoattack_rand', 'aistats_cw'}
    papers = {a.name for a in select(mnist, preset='papers')}
    assert {'pgd20', 'autoattack_standard', 'autoattack_rand', 'aistats_pgd', 'aistats_pgd40', 'aistats_cw',
            'aistats_blind_spot'} == papers
    assert next(a for a in mnist if a.name == 'aistats_pgd40').settings['steps'] == 40  # the AISTATS Table 6
    assert 'aistats_pgd20' in {a.name for a in cifar}  # its Table 7
    assert len(select(cifar, preset='all')) == len(cifar)
    with pytest.raises(ValueError, match='unknown preset'):
        select(cifar, preset='fast')
