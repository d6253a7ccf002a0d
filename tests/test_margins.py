"""lwta-zoo margins: the DCT subspaces, subspace-constrained DeepFool, and the fresh-prediction check."""
import json

import numpy as np
import pytest
import torch
import torch.nn as nn

from lwta_zoo import LWTA
from lwta_zoo.attacks.margins import (
    changed_majority, dct_matrix, diagonal_subspaces, margins, subspace_deepfool, summarise)
from lwta_zoo.attacks.pgd import gradient_surrogate
from lwta_zoo.cli import main


@pytest.mark.parametrize('n', [8, 28, 32])
def test_dct_basis_is_orthonormal_and_blocks_project_orthogonally(n):
    D = dct_matrix(n).double()
    torch.testing.assert_close(D @ D.t(), torch.eye(n, dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(D[0], torch.full((n,), n ** -0.5, dtype=torch.float64))  # the constant image first
    sub = diagonal_subspaces(n, n, block=4, stride=4)[1]
    g = torch.randn(3, 2, n, n)
    p = sub.project(g)
    torch.testing.assert_close(sub.project(p), p, atol=1e-5, rtol=0)  # idempotent
    torch.testing.assert_close((p * g).sum(), (p * p).sum(), atol=1e-3, rtol=1e-5)  # g - p is orthogonal to p
    if n == 8:  # P as a matrix: rank K^2
        projector = sub.project(torch.eye(n * n, dtype=torch.float64).view(-1, n, n)).flatten(1)
        assert torch.linalg.matrix_rank(projector) == sub.dimension(1) == 16


def test_linear_classifier_margin_is_the_distance_to_the_boundary_within_each_subspace():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 5)).eval()
    x = torch.rand(12, 1, 8, 8)
    subspaces = diagonal_subspaces(8, 8, block=4, stride=2)
    result = margins(model, x, subspaces, repeats=1, overshoot=0.02, batch_size=5)
    W, b = model[1].weight.detach(), model[1].bias.detach()
    logits = x.flatten(1) @ W.t() + b
    label = logits.argmax(1)
    assert result['label'] == label.tolist() and list(result['ways']) == ['deterministic']
    for sub, row in zip(subspaces, result['ways']['deterministic']):
        for i in range(len(x)):
            w = sub.project((W - W[label[i]]).view(5, 1, 8, 8)).flatten(1)  # the boundary normals, projected
            f = (logits[i] - logits[i, label[i]]).abs()
            distance = torch.where(torch.arange(5) == label[i], torch.inf, f / w.norm(dim=1))
            j = distance.argmin()
            analytic = 1.02 * (f[j] + 1e-4) / w[j].norm()  # DeepFool's overshoot and its 1e-4 step margin
            assert row['status'][i] == 'found'
            assert row['margin'][i] == pytest.approx(float(analytic), rel=1e-4)
            delta = row['delta'][i]
            torch.testing.assert_close(sub.project(delta), delta, atol=1e-5, rtol=0)  # inside the subspace
    # a subspace that cannot reach any boundary: every example censored, reported as such
    flat = nn.Sequential(nn.Flatten(), nn.Linear(64, 2)).eval()
    with torch.no_grad():
        flat[1].weight.zero_()
        flat[1].weight[:, 0] = torch.tensor([1.0, -1.0])  # depends on pixel (0, 0) only; its DCT spreads though
        flat[1].bias.copy_(torch.tensor([10.0, 0.0]))
    delta, found = subspace_deepfool(flat, x[:3], torch.zeros(3, dtype=torch.long), lambda g: 0 * g, max_iter=3)
    assert not found.any() and (delta == 0).all()


def tiny_lwta() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), LWTA(U=2), nn.Linear(16, 4)).eval()


def test_surrogate_margins_are_checked_by_fresh_predictions():
    model, x = tiny_lwta(), torch.rand(16, 1, 8, 8)
    subspaces = diagonal_subspaces(8, 8, block=4, stride=4)
    result = margins(model, x, subspaces, repeats=15, max_extend=8.0, batch_size=16, seed=3)
    label = torch.tensor(result['label'])
    assert list(result['ways']) == ['model', 'mean']
    for row in result['ways']['mean']:
        status = np.array(row['status'])
        assert set(status) <= {'confirmed', 'extended', 'censored'} and (status != 'censored').any()
        delta, kept = row['delta'], torch.from_numpy(status != 'censored')
        norms = delta.flatten(1).norm(dim=1)
        assert [m is None for m in row['margin']] == (~kept).tolist()
        assert np.allclose([m for m in row['margin'] if m is not None], norms[kept].numpy())
        # a confirmed point is where the surrogate itself changed class
        confirmed = torch.from_numpy(status == 'confirmed')
        with torch.no_grad(), gradient_surrogate(model, 'mean'):
            assert (model(x + delta)[confirmed].argmax(1) != label[confirmed]).all()
        # an independent check with many more fresh predictions agrees where the margin stands
        torch.manual_seed(12345)
        changed = changed_majority(model, (x + delta)[kept], label[kept], repeats=201)
        assert changed.float().mean() >= 0.8
    # the paper's way stops where one forward changed class: its points are scored, not moved
    for row in result['ways']['model']:
        status = np.array(row['status'])
        assert set(status) <= {'really_changed', 'not_changed', 'censored'}
        assert [m is None for m in row['margin']] == (status == 'censored').tolist()


def test_summary_counts_censored_examples_as_beyond_every_margin():
    s = summarise([1.0, 2.0, None, 4.0, None], ['found', 'found', 'censored', 'found', 'censored'])
    assert s['mean'] == pytest.approx(7 / 3) and s['median'] == 4.0 and s['censored'] == pytest.approx(0.4)
    assert s['status_counts'] == {'censored': 2, 'found': 3} and s['n'] == 5 and s['n_found'] == 3
    mostly_censored = summarise([1.0, None, None], ['found', 'censored', 'censored'])
    assert mostly_censored['median'] is None and mostly_censored['median_interval'][1] is None


def test_margins_command_writes_report_and_figure(tmp_path, capsys):
    out = tmp_path / 'm'
    code = main(['margins', 'aistats_softmax_mnist.lwta_u2_fmnist_pgd', '--data', 'lwta_zoo/data/fashion_mnist_test_500.npz',
                 '--n', '2', '--block', '14', '--stride', '14', '--max-iter', '3', '--repeats', '3',
                 '--extend-steps', '2', '--output', str(out)])
    assert code == 0
    report = json.loads((out / 'report.json').read_text())
    entry = report['models']['aistats_softmax_mnist.lwta_u2_fmnist_pgd']
    assert report['n'] == 2 and report['settings']['repeats'] == 3 and report['settings']['seed'] == 0
    assert entry['samples'] == 5 and set(entry['ways']) == {'model', 'mean'}
    assert [s['origin'] for s in report['subspaces']] == [[0, 0], [14, 14]]
    assert all(len(rows) == 2 and rows[0]['n'] == 2 for rows in entry['ways'].values())
    assert (out / 'margins.png').stat().st_size > 0
    assert main(['margins', 'aistats_softmax_mnist.lwta_u2_fmnist_pgd', '--data',
                 'lwta_zoo/data/fashion_mnist_test_500.npz', '--block', '40', '--output', str(out)]) == 2
    assert '--block 40 and --stride 4 do not fit 28x28 images' in capsys.readouterr().err
