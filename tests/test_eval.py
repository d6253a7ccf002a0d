"""The evaluation suite: attack strength, EoT, surrogates on foreign models, report invariants, scale-out."""
from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

import lwta_zoo
from lwta_zoo.attacks import input_gradient, pgd
from lwta_zoo.attacks.autoattack import apgd
from lwta_zoo.attacks.cw import cw_l2
from lwta_zoo.attacks.command import configure_eval, load_data, load_model
from lwta_zoo.attacks.suite import evaluate, pgd_attack, select, suite
from lwta_zoo.hub import save_pretrained
from toy import fit

REPO = Path(__file__).resolve().parents[1]



def _task(n: int, seed: int) -> tuple:
    """An easy 4-class task on 1x8x8 images: a fixed template per class plus noise, in [0, 1]."""
    templates = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.6 + 0.2
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    return (templates[y] + 0.1 * torch.randn(n, 1, 8, 8, generator=g)).clamp(0, 1), y


@pytest.fixture(scope='module')
def relu_model() -> nn.Module:
    """A small ReLU CNN trained on ``_task`` in about a second."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 4))
    return fit(model, *_task(256, 1))


def test_pgd_breaks_a_relu_model_inside_the_ball(relu_model):
    x, y = _task(200, 2)
    assert (relu_model(x).argmax(1) == y).float().mean() > 0.95
    eps = 0.5
    x_adv = pgd(relu_model, x, y, eps, 0.05, 40, generator=torch.Generator().manual_seed(0))
    assert (relu_model(x_adv).argmax(1) == y).float().mean() < 0.05
    assert (x_adv - x).abs().max() <= eps + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1


def test_pgd_is_as_strong_as_apgd_ce_at_the_same_budget(relu_model):
    x, y = _task(200, 3)
    eps, steps = 0.05, 50
    torch.manual_seed(0)
    ours = (relu_model(pgd(relu_model, x, y, eps, 2.5 * eps / steps, steps)).argmax(1) == y).float().mean()
    theirs = (relu_model(apgd(relu_model, x, y, eps=eps, steps=steps)).argmax(1) == y).float().mean()
    assert 0.02 < theirs < 0.98, 'eps must leave APGD something to do'
    assert ours <= theirs + 0.05  # "within noise": 10 of 200 examples


def test_batched_eot_has_the_expected_gradient_of_single_samples(relu_model):
    """The batched EoT gradient over K draws and the mean of K single-draw gradients estimate one
    expectation: their squared difference, summed over coordinates, is about its variance."""
    model = lwta_zoo.convert(copy.deepcopy(relu_model)).eval()
    x, y = _task(2, 4)
    K = 200
    torch.manual_seed(0)
    batched = input_gradient(model, x, y, eot_samples=K)
    singles = torch.stack([input_gradient(model, x, y) for _ in range(K)])
    looped = singles.mean(0)
    variance = singles.var(0) * 2 / K  # of the difference of two independent K-draw means
    assert (variance > 0).sum() > 50
    # 1 expected. The coordinates move together (a few winners drive them all), so the ratio spreads
    # widely: 0.3-1.7 over seeds 0-9 here; a batched gradient 1.5x too large already gives about 4.
    assert (batched - looped).pow(2).sum() / variance.sum() < 3
    assert not torch.allclose(singles[0], singles[1]), 'the converted model must be stochastic'


def test_eot_on_a_deterministic_model_is_one_gradient_a_step(relu_model):
    """EoT draws of a model with nothing random in it are all the same: one forward a step, same result."""
    x, y = _task(6, 5)
    stochastic = lwta_zoo.convert(copy.deepcopy(relu_model)).eval()
    for model, expected in ((relu_model, [6, 6, 6]), (stochastic, [30, 30, 30])):  # 5 draws fold into the batch
        rows = []
        hook = model[0].register_forward_hook(lambda m, i, o: rows.append(len(i[0])))
        try:
            pgd(model, x, y, 0.1, 0.03, 3, gradient='eot', eot_samples=5)
        finally:
            hook.remove()
        assert rows == expected
    same = [pgd(relu_model, x, y, 0.1, 0.03, 3, generator=torch.Generator().manual_seed(0), **kw)
            for kw in ({'gradient': 'eot', 'eot_samples': 5}, {})]
    assert torch.equal(*same)


def test_surrogate_attacks_run_on_a_converted_timm_model():
    model = lwta_zoo.convert(timm.create_model('resnet10t', num_classes=4)).eval()
    x, y = torch.rand(3, 3, 32, 32), torch.tensor([0, 1, 2])
    for attack in select(suite(eot_samples=2, adaptive_steps=2), ['eot_pgd', 'pgd_mean', 'pgd_max', 'pgd_ste']):
        torch.manual_seed(0)
        x_adv = attack.run(model, x, y, 0)
        assert (x_adv - x).abs().max() <= 8 / 255 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
        assert (x_adv != x).any(), attack.name
    with lwta_zoo.attacks.gradient_surrogate(model, 'mean'):
        clean = F.cross_entropy(model(x), y)
        x_adv = apgd(model, x, y, eps=8 / 255, steps=5, gradient='mean')
        assert F.cross_entropy(model(x_adv), y) > clean


def test_report_of_a_deterministic_model_is_the_old_rule_exactly(relu_model, tmp_path):
    """No randomness, no noise to guard against: every figure is 'correct on the clean input and on
    every attack output', p_correct equals the accuracy, and the worst case is below every attack."""
    x, y = _task(24, 5)
    attacks = [pgd_attack('weak', 'adaptive', eps=0.03, step_size=0.01, steps=3),
               pgd_attack('strong', 'adaptive', eps=0.2, step_size=0.05, steps=10),
               *select(suite(cw_steps=100, cw_binary_steps=5), ['aistats_cw'])]
    report = evaluate(relu_model, x, y, attacks, repeats=3, batch_size=12, random_inputs=50, output=tmp_path,
                      progress=False)
    on_disk = json.loads((tmp_path / 'report.json').read_text())
    assert on_disk['robust_accuracy'] == report['robust_accuracy']
    assert set(report['attacks']) == {'weak', 'strong', 'aistats_cw'}
    with torch.no_grad():
        clean = relu_model(x).argmax(1) == y
    assert report['clean_accuracy'] == clean.float().mean().item()
    old = report['previous_rule']
    assert report['clean_accuracy'] == old['clean_accuracy']
    assert report['robust_accuracy'] == old['robust_accuracy']
    assert report['worst_case_accuracy'] == old['worst_case_accuracy']['Linf@0.2']
    assert all(a['p_correct'] == a['accuracy'] for a in report['attacks'].values())
    for acc in [report['clean_accuracy'], *(a['accuracy'] for a in report['attacks'].values()
                                            if a['threat_model'] == 'Linf')]:
        assert report['worst_case_accuracy'] <= acc
    assert report['robust_accuracy']['strong'] < report['robust_accuracy']['weak'] < report['clean_accuracy']
    assert report['robust_accuracy']['aistats_cw'] < report['clean_accuracy'], 'CW is unbounded: it must succeed'
    assert 0 <= report['random_attack']['low_confidence_fraction'] <= 1
    # threat models apart: CW (L2) is in no L-inf worst case; 'weak' (eps 0.03) is in both L-inf ones
    tms = {(t['threat_model'], t['eps']): t['attacks'] for t in report['threat_models']}
    assert tms == {('Linf', 0.03): ['weak'], ('Linf', 0.2): ['weak', 'strong'], ('L2', None): ['aistats_cw']}
    assert report['attacks']['aistats_cw']['median_l2'] > 0
    table = (tmp_path / 'report.md').read_text()
    assert '| **worst case** |' in table and f"{100 * report['clean_accuracy']:.1f} [" in table


def test_attacks_neither_train_nor_freeze_the_model(relu_model):
    """CW's backward differentiates its own variable only, and the suite runs attacks with the
    parameters out of autograd (a third of a conv net's attack step), then restores them."""
    model = copy.deepcopy(relu_model)
    for p in model.parameters():
        p.grad = None
    x, y = _task(8, 7)
    cw_l2(model, x, y, steps=5, binary_search_steps=2)
    assert all(p.grad is None for p in model.parameters())
    attacks = [pgd_attack('pgd', 'adaptive', eps=0.1, step_size=0.05, steps=2),
               *select(suite(cw_steps=5, cw_binary_steps=2), ['aistats_cw'])]
    evaluate(model, x, y, attacks, repeats=1, batch_size=8, random_inputs=0, progress=False)
    assert all(p.requires_grad and p.grad is None for p in model.parameters())


def test_report_of_a_stochastic_model_is_deterministic_given_the_seed(relu_model):
    model = lwta_zoo.convert(copy.deepcopy(relu_model)).eval()
    x, y = _task(24, 5)
    attacks = [pgd_attack('mean', 'adaptive', eps=0.1, step_size=0.02, steps=5, gradient='mean')]
    first, again = (evaluate(model, x, y, attacks, repeats=3, batch_size=12, random_inputs=0, progress=False)
                    for _ in range(2))
    assert again['per_example'] == first['per_example']
    sel, ev = first['per_example']['selection'], first['per_example']['evaluation']
    assert sel['clean'] != ev['clean'], 'selection and evaluation must be separate draws'
    low, high = first['clean']['interval']
    assert low <= first['clean_accuracy'] <= high and high - low > 0.1  # n=24: a wide interval


def test_resume_reuses_finished_batches_and_refuses_another_run(relu_model, tmp_path):
    model = lwta_zoo.convert(copy.deepcopy(relu_model)).eval()
    x, y = _task(20, 6)
    a = pgd_attack('a', 'adaptive', eps=0.05, step_size=0.01, steps=5)
    b = pgd_attack('b', 'adaptive', eps=0.1, step_size=0.02, steps=5, gradient='max')
    run = dict(repeats=3, batch_size=8, random_inputs=0, progress=False)
    identity = {'model': 'tiny', 'data': 'task'}
    first = evaluate(model, x, y, [a], output=tmp_path, identity=identity, **run)
    full = evaluate(model, x, y, [a, b], output=tmp_path, resume=True, identity=identity, **run)
    assert full['attacks']['a']['time_s'] == first['attacks']['a']['time_s']  # not run again
    fresh = evaluate(model, x, y, [a, b], identity=identity, **run)
    assert fresh['per_example'] == full['per_example']
    other_weights = copy.deepcopy(model)
    with torch.no_grad():
        next(other_weights.parameters())[0] += 1
    cases = {'weights_sha256': (other_weights, x, y, [a], run, identity),
             'data_sha256': (model, x.flip(0), y.flip(0), [a], run, identity),
             'model': (model, x, y, [a], run, {**identity, 'model': 'other'}),
             'repeats': (model, x, y, [a], {**run, 'repeats': 5}, identity),
             'settings of a': (model, x, y, [pgd_attack('a', 'adaptive', eps=0.06, step_size=0.01, steps=5)], run,
                               identity)}
    for what, (m, xs, ys, attacks, kwargs, ident) in cases.items():
        with pytest.raises(ValueError, match=f'another run: {what}') as error:
            evaluate(m, xs, ys, attacks, output=tmp_path, resume=True, identity=ident, **kwargs)
        assert '\n' not in str(error.value)
    samples = lwta_zoo.MultiSample(copy.deepcopy(model), samples=3)
    with pytest.raises(ValueError, match='samples 1 != 3'):
        evaluate(samples, x, y, [a], output=tmp_path, resume=True, identity=identity, **run)


def test_cli_sharded_over_two_gloo_processes_matches_one_process(tmp_path):
    torch.manual_seed(0)
    save_pretrained(timm.create_model('smallcnn_mnist_lwta'), tmp_path / 'model')
    model = load_model(str(tmp_path / 'model'))
    images = np.random.default_rng(0).integers(0, 256, (12, 28, 28, 1), dtype=np.uint8)
    with torch.no_grad():
        labels = model(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255).argmax(1).numpy()
    np.savez(tmp_path / 'data.npz', images=images, labels=labels)
    x, y, index = load_data(str(tmp_path / 'data.npz'), 5)
    assert x.shape == (5, 1, 28, 28) and (y == torch.from_numpy(labels)[index]).all()
    parser = argparse.ArgumentParser()
    configure_eval(parser)
    refused = parser.parse_args([str(tmp_path / 'model'), '--data', str(tmp_path / 'data.npz'), '--output',
                                 str(tmp_path / 'refused')])
    with pytest.raises(ValueError, match='cannot tell the dataset'):  # never another dataset's budget
        refused.func(refused)
    args = [str(tmp_path / 'model'), '--data', str(tmp_path / 'data.npz'), '--dataset', 'mnist', '--n', '10',
            '--attacks', 'pgd20,eot_pgd',
            '--eot-samples', '2', '--adaptive-steps', '3', '--batch-size', '6', '--random-inputs', '20',
            '--threads', '1', '--no-progress']
    one = parser.parse_args(args + ['--output', str(tmp_path / 'one')])
    assert one.func(one) == 0
    # the form eval's help gives (issue 37): without `--`, torchrun reads `--n` as its own --nnodes or --nproc...
    assert 'torchrun --nproc_per_node=K -m lwta_zoo.cli -- eval MODEL --data NPZ --n N' in parser.description
    subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2', '--master_port=29533',
                    '-m', 'lwta_zoo.cli', '--', 'eval', *args, '--output', str(tmp_path / 'two'), '--no-figures'],
                   check=True, cwd=REPO, capture_output=True, timeout=120)
    reports = {name: json.loads((tmp_path / name / 'report.json').read_text()) for name in ('one', 'two')}
    assert reports['two']['world_size'] == 2 and reports['one']['world_size'] == 1
    assert reports['two']['per_example'] == reports['one']['per_example']
    assert reports['two']['robust_accuracy'] == reports['one']['robust_accuracy']
    assert {p.name for p in (tmp_path / 'one').glob('*.png')} == {
        'robust_vs_eps.png', 'winner_probabilities.png', 'logit_trajectories.png'}
