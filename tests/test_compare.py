"""lwta-zoo compare: two reports on the same examples, paired per example."""
import json
from pathlib import Path

import pytest

from lwta_zoo.attacks.compare import defended, paired
from lwta_zoo.cli import main


def _report(clean, worst_counts, chosen, *, indices=(3, 5, 8, 13), data='d' * 64, fmt=2) -> dict:
    """A format-2 report of R=5 on four examples: evaluation counts per candidate and the worst case's choice."""
    return {'format': fmt, 'model': 'm', 'repeats': 5, 'samples': 1, 'indices': list(indices),
            'identity': {'data_sha256': data},
            'per_example': {'evaluation': {'clean': clean, 'pgd20': worst_counts, 'pgd_mean': [0, 0, 0, 0]},
                            'chosen': {'Linf@0.1': chosen}}}


A = _report([5, 5, 5, 0], [5, 3, 0, 0], ['pgd20', 'pgd20', 'pgd20', 'pgd_mean'])
B = _report([5, 5, 5, 5], [0, 5, 5, 5], ['pgd20', 'pgd20', 'pgd20', 'pgd20'])


def test_defended_reads_the_chosen_candidate_by_majority_of_its_fresh_draws():
    d = defended(A)
    assert d['clean'].tolist() == [True, True, True, False]
    assert d['Linf@0.1'].tolist() == [True, True, False, False]  # 3 of 5 is a majority; example 4 chose pgd_mean


def test_paired_difference_counts_the_examples_only_one_model_defends():
    clean, worst = paired(A, B)
    assert clean['figure'] == 'clean' and (clean['a'], clean['b'], clean['only_a'], clean['only_b']) == (
        0.75, 1.0, 0, 1)
    assert worst['figure'] == 'Linf@0.1' and (worst['only_a'], worst['only_b']) == (1, 2)
    assert worst['difference'] == pytest.approx(0.5 - 0.75)
    low, high = worst['difference_interval']
    assert low <= worst['difference'] <= high and low < high
    same = paired(A, A)[1]
    assert same['difference'] == 0 and same['difference_interval'] == [0.0, 0.0] and same['only_a'] == 0


def _write(tmp_path: Path, name: str, report: dict) -> str:
    (tmp_path / name).mkdir()
    (tmp_path / name / 'report.json').write_text(json.dumps(report))
    return str(tmp_path / name)


def test_the_command_prints_the_pairs_and_refuses_other_examples_or_old_reports(tmp_path, capsys):
    a, b = _write(tmp_path, 'a', A), _write(tmp_path, 'b', B)
    assert main(['compare', a, b, '--json']) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r['figure'] for r in rows] == ['clean', 'Linf@0.1']
    for other, why in ((_report([5] * 4, [5] * 4, ['pgd20'] * 4, indices=(1, 2, 3, 4)), 'same examples'),
                       (_report([5] * 4, [5] * 4, ['pgd20'] * 4, data='e' * 64), 'same examples'),
                       (_report([5] * 4, [5] * 4, ['pgd20'] * 4, fmt=1), 'format 1')):
        path = _write(tmp_path, f'other{len(list(tmp_path.iterdir()))}', other)
        assert main(['compare', a, path]) == 2
        err = capsys.readouterr().err
        assert err.count('\n') == 1 and err.startswith('lwta-zoo compare: error:') and why in err
