"""The lwta-zoo command: every subcommand loads; the demo runs end to end offline, on a fresh clone
(the shipped Fashion-MNIST models) and with the authors' weights converted (CIFAR-10 too)."""
import json
import subprocess
import sys

from conftest import AUTHORS
from lwta_zoo import hub
from lwta_zoo.cli import COMMANDS, build_parser, main
from lwta_zoo.demo import FMNIST_MODELS


def test_every_subcommand_is_wired():
    help_text = build_parser().format_help()
    assert all(name in help_text for name in COMMANDS)
    assert {'demo', 'train', 'eval', 'import', 'push'} <= set(COMMANDS)


def test_console_script_runs():
    out = subprocess.run([sys.executable, '-m', 'lwta_zoo.cli', '--help'], capture_output=True, text=True, check=True)
    assert 'demo' in out.stdout


def _demo(output, *extra):
    assert main(['demo', '--n', '2', '--steps', '2', '--repeats', '1', '--output', str(output), *extra]) == 0


def test_demo_on_a_fresh_clone_attacks_the_shipped_fashion_mnist_models(fresh_clone, tmp_path, capsys):
    _demo(tmp_path)
    printed = capsys.readouterr().out
    for name in FMNIST_MODELS:
        report = json.loads((tmp_path / name / 'report.json').read_text())
        assert report['n'] == 2 and report['model'] == name and report['data'] == 'fashion_mnist_test_500.npz'
        # the papers' protocol and the adaptive attack, each at the dataset's eps and one smaller
        assert sorted(a.split('@')[0] for a in report['attacks']) == ['pgd20', 'pgd20', 'pgd_mean', 'pgd_mean']
        assert report['attacks']['pgd20']['settings']['eps'] == 0.1
        assert (tmp_path / name / 'robust_vs_eps.png').stat().st_size > 0
        assert f'\n| {name} | 0.1 | ' in printed  # its row of the summary
    # no authors' weights here: the demo says why it skipped them and how to convert them
    assert not (tmp_path / AUTHORS).exists()
    assert hub.conversion(AUTHORS)['command'] in printed.split('did not run.', 1)[1]


def test_demo_also_attacks_the_authors_weights_where_converted(authors_weights, tmp_path, capsys):
    _demo(tmp_path, '--cifar-n', '2')
    printed = capsys.readouterr().out
    assert all((tmp_path / name / 'report.json').is_file() for name in FMNIST_MODELS)
    for protocol in ('authors_tau0.01', 'exact_samples'):
        out = tmp_path / AUTHORS / protocol
        report = json.loads((out / 'report.json').read_text())
        assert report['n'] == 2 and report['data'] == 'cifar10_test_500.npz' and report['protocol'] == protocol
        assert sorted(a.split('@')[0] for a in report['attacks']) == ['pgd20', 'pgd20', 'pgd_mean', 'pgd_mean']
        assert (out / 'robust_vs_eps.png').stat().st_size > 0
        assert f'\n| {AUTHORS}, {protocol} | 8/255 | ' in printed
        eval_tau = report.get('lwta_args', {}).get('eval_tau')
        assert eval_tau == (0.01 if protocol == 'authors_tau0.01' else None)
    assert 'did not run' not in printed
