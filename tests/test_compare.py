"""lwta-zoo compare: two reports on the same examples, paired per example."""
import json
from pathlib import Path

import numpy as np
import pytest

from lwta_zoo.attacks.compare import defended, paired
from lwta_zoo.attacks.suite import figure
from lwta_zoo.cli import main


def _report(clean, worst_counts, chosen, *, indices=(3, 5, 8, 13), data='d' * 64, fmt=2, labels=None) -> dict:
    """A format-2 report of R=5 on four examples: evaluation counts per candidate and the worst case's choice."""
    evaluation = {'clean': clean, 'pgd20': worst_counts, 'pgd_mean': [0] * len(clean)}
    fig = lambda counts: figure(np.array(counts), 5)  # noqa: E731
    worst = fig([evaluation[c][i] for i, c in enumerate(chosen)])
    attacks = {a: {**fig(evaluation[a]), 'robust_accuracy': fig(evaluation[a])['accuracy'], 'threat_model': 'Linf',
                   'eps': 0.1, 'protocol': 'adaptive', 'settings': {'attack': 'pgd', 'eps': 0.1}}
               for a in ('pgd20', 'pgd_mean')}
    return {'format': fmt, 'model': 'm', 'n': len(clean), 'repeats': 5, 'samples': 1, 'indices': list(indices),
            'identity': {'data_sha256': data, 'data': 'test.npz'},
            'clean': fig(clean), 'clean_accuracy': fig(clean)['accuracy'], 'attacks': attacks,
            'threat_models': [{**worst, 'threat_model': 'Linf', 'eps': 0.1, 'attacks': sorted(attacks)}],
            'worst_case': worst, 'worst_case_accuracy': worst['accuracy'],
            'per_example': {'label': labels or [i % 10 for i in indices], 'evaluation': evaluation,
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


def test_a_report_on_a_subset_pairs_on_the_examples_both_hold():
    """A seeded subset (its own data hash) pairs with the full run by index: here examples 13 and 5, in the
    subset's own order, against A's fourth and second."""
    subset = _report([5, 0], [5, 5], ['pgd20', 'pgd20'], indices=(13, 5), data='s' * 64)
    clean, worst = paired(A, subset)
    assert clean['n'] == worst['n'] == 2
    assert (clean['a'], clean['b'], clean['only_a'], clean['only_b']) == (0.5, 0.5, 1, 1)  # 13: B only; 5: A only
    assert (worst['a'], worst['b'], worst['only_b']) == (0.5, 1.0, 1)
    relabelled = _report([5, 0], [5, 5], ['pgd20', 'pgd20'], indices=(13, 5), data='s' * 64, labels=[0, 0])
    with pytest.raises(ValueError, match='same examples'):
        paired(A, relabelled)   # the same indices of other data


def _write(tmp_path: Path, name: str, report: dict) -> str:
    (tmp_path / name).mkdir()
    (tmp_path / name / 'report.json').write_text(json.dumps(report))
    return str(tmp_path / name)


def test_the_command_prints_the_pairs_and_refuses_other_examples_or_old_reports(tmp_path, capsys):
    a, b = _write(tmp_path, 'a', A), _write(tmp_path, 'b', B)
    assert main(['compare', a, b, '--json']) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r['figure'] for r in rows] == ['clean', 'Linf@0.1']
    for other, why in ((_report([5] * 4, [5] * 4, ['pgd20'] * 4, indices=(1, 2, 4, 6)), 'same examples'),
                       (_report([5] * 4, [5] * 4, ['pgd20'] * 4, data='e' * 64), 'same examples'),
                       (_report([5] * 4, [5] * 4, ['pgd20'] * 4, fmt=1), 'format 1')):
        path = _write(tmp_path, f'other{len(list(tmp_path.iterdir()))}', other)
        assert main(['compare', a, path]) == 2
        err = capsys.readouterr().err
        assert err.count('\n') == 1 and err.startswith('lwta-zoo compare: error:') and why in err


BROKEN = {  # (what is done to a good report, the field the refusal names); issue 37, item 7
    'nan accuracy': (lambda r: r['attacks']['pgd20'].update(accuracy=float('nan')), 'attacks.pgd20.accuracy'),
    'repeats 0': (lambda r: r.update(repeats=0), 'repeats'),
    'counts above R': (lambda r: r['per_example']['evaluation']['clean'].__setitem__(1, 9),
                       'per_example.evaluation.clean[1]'),
    'missing n': (lambda r: r.pop('n'), 'n is missing'),
    'short array': (lambda r: r['per_example']['chosen']['Linf@0.1'].pop(), 'per_example.chosen.Linf@0.1'),
    'missing key': (lambda r: r['per_example'].pop('chosen'), 'per_example.chosen is missing'),
    'accuracy above 1': (lambda r: r['clean'].update(accuracy=1.5), 'clean.accuracy'),
    'interval reversed': (lambda r: r['clean'].update(interval=[0.9, 0.1]), 'clean.interval'),
}


@pytest.mark.parametrize('case', sorted(BROKEN))
def test_reports_edited_by_hand_are_refused_with_the_file_and_field(case, tmp_path, capsys):
    report = json.loads(json.dumps(A))
    edit, field = BROKEN[case]
    edit(report)
    bad = _write(tmp_path, 'bad', report)
    assert main(['compare', _write(tmp_path, 'a', A), bad]) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'Traceback' not in err, err
    assert f'{bad}/report.json: {field}' in err and 'rerun the evaluation' in err, err


def test_files_that_are_not_reports(tmp_path, capsys):
    a = _write(tmp_path, 'a', A)
    (tmp_path / 'broken.json').write_text('{"format": 2, "n": ')
    (tmp_path / 'partial.json').write_text(json.dumps({'config': {}, 'batches': {}, 'time': {}, 'random': None}))
    for path, why in ((tmp_path / 'broken.json', 'broken.json is not a readable report.json'),
                      (tmp_path / 'partial.json', 'partial.json is the partial state of an unfinished lwta-zoo eval'),
                      (tmp_path / 'none.json', 'No report')):
        assert main(['compare', a, str(path)]) == 2
        err = capsys.readouterr().err
        assert err.count('\n') == 1 and why in err, err
