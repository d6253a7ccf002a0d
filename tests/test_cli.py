"""The lwta-zoo command: every subcommand loads; the demo runs end to end offline."""
import json
import subprocess
import sys

from lwta_zoo.cli import COMMANDS, build_parser, main


def test_every_subcommand_is_wired():
    help_text = build_parser().format_help()
    assert all(name in help_text for name in COMMANDS)
    assert {'demo', 'train', 'eval', 'import', 'push'} <= set(COMMANDS)


def test_console_script_runs():
    out = subprocess.run([sys.executable, '-m', 'lwta_zoo.cli', '--help'], capture_output=True, text=True, check=True)
    assert 'demo' in out.stdout


def test_demo_on_two_examples(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    assert main(['demo', '--n', '2', '--steps', '2', '--repeats', '1', '--output', str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    for protocol in ('authors_tau0.01', 'exact_samples'):
        report = json.loads((tmp_path / protocol / 'report.json').read_text())
        assert report['n'] == 2 and set(report['attacks']) == {'pgd20', 'pgd20@4/255', 'pgd_mean', 'pgd_mean@4/255'}
        assert (tmp_path / protocol / 'robust_vs_eps.png').stat().st_size > 0
        assert f'wrn34_1_lwta, {protocol}' in printed
        eval_tau = report.get('lwta_args', {}).get('eval_tau')
        assert eval_tau == (0.01 if protocol == 'authors_tau0.01' else None)
