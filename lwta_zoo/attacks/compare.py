"""``lwta-zoo compare A B``: two models' (or two evaluations') accuracy on the same examples, paired.

Two reports of ``lwta-zoo eval`` of the same data (equal data hash) hold, per example, whether each
model defended it: clean, and in each worst case the candidate the selection
draws chose, scored by its fresh evaluation draws (report format 2). The difference of two
accuracies then has an interval from resampling the examples together, much narrower than two
separate intervals suggest when the models fail on the same hard examples, and the examples only
one of them defends say where they differ. The pairs are the examples both reports hold (their
common indices), so a report on a seeded subset pairs with one on all the examples: one model's
suite against its AutoAttack run on 200 of the same 1,000, say.

    lwta-zoo compare runs/fmnist/relu/eval/suite_n1000 runs/fmnist/lwta/eval/suite_n1000
"""
from __future__ import annotations

import argparse
import json
from typing import Any, Dict, List

import numpy as np

from . import reports
from .suite import FORMAT, bootstrap, wilson


def read_report(path: str) -> Dict[str, Any]:
    """The checked report.json at ``path`` (``reports.read_report``); a report from before per-example worst
    cases (format 1) is refused."""
    report = reports.read_report(path)
    if report.get('format', 1) != FORMAT:
        raise ValueError(f'{path} is a report of format {report.get("format", 1)}; comparing needs format {FORMAT} '
                         '(rerun it with this lwta_zoo)')
    return report


def defended(report: Dict[str, Any]) -> Dict[str, np.ndarray]:
    """Per example (in the order of ``report['indices']``), whether the model defended it: 'clean' and each
    worst case ('Linf@0.1', ...)."""
    examples = report['per_example']
    majority = lambda counts: 2 * np.asarray(counts) > report['repeats']  # noqa: E731
    out = {'clean': majority(examples['evaluation']['clean'])}
    for key, chosen in examples['chosen'].items():
        out[key] = majority([examples['evaluation'][c][i] for i, c in enumerate(chosen)])
    return out


def paired(a: Dict[str, Any], b: Dict[str, Any]) -> List[Dict[str, Any]]:
    """For every figure both reports hold, on the examples both hold: each model's accuracy (Wilson interval),
    the difference a - b with a 95% bootstrap interval over the examples resampled together, and the examples
    only one defends."""
    row = [{index: k for k, index in enumerate(r['indices'])} for r in (a, b)]  # example index -> report row
    common = sorted(row[0].keys() & row[1].keys())
    rows_a, rows_b = (np.array([r[i] for i in common], dtype=int) for r in row)
    labels = [np.asarray(r['per_example']['label'])[rows] for r, rows in ((a, rows_a), (b, rows_b))]
    same = (a['identity']['data_sha256'] == b['identity']['data_sha256'] if a['indices'] == b['indices'] else
            a['identity']['data'] == b['identity']['data'] and np.array_equal(*labels))  # a subset hashes its own
    if not common or not same:
        raise ValueError('the reports were not measured on the same examples (their data differs or they share '
                         'no index); give both runs the same --data and --seed')
    da, db = defended(a), defended(b)
    rows = []
    for key in [k for k in da if k in db]:
        x, y = da[key][rows_a], db[key][rows_b]
        n = len(x)
        rows.append({'figure': key, 'n': n, 'a': float(x.mean()), 'a_interval': wilson(int(x.sum()), n),
                     'b': float(y.mean()), 'b_interval': wilson(int(y.sum()), n),
                     'difference': float(x.mean() - y.mean()),
                     'difference_interval': bootstrap(x.astype(float) - y.astype(float)),
                     'only_a': int((x & ~y).sum()), 'only_b': int((~x & y).sum())})
    return rows


def configure_compare(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``lwta-zoo compare``."""
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument('a', help='report.json of model A (or its folder)')
    parser.add_argument('b', help='report.json of model B (or its folder)')
    parser.add_argument('--json', action='store_true', help='print the rows as JSON')
    parser.set_defaults(func=run_compare)


def run_compare(args: argparse.Namespace) -> int:
    a, b = read_report(args.a), read_report(args.b)
    rows = paired(a, b)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    pct = lambda v: f'{100 * v:.1f}'  # noqa: E731
    span = lambda i: f'[{pct(i[0])}, {pct(i[1])}]'  # noqa: E731
    held = '' if a['indices'] == b['indices'] else f" of A's {len(a['indices'])} and B's {len(b['indices'])}"
    print(f"A: {a['model']}  B: {b['model']}  (the same {rows[0]['n']} examples{held}, "
          f"R={a['repeats']}/{b['repeats']}, L={a['samples']}/{b['samples']})")
    for r in rows:
        print(f"{r['figure']:>12}: A {pct(r['a'])}% {span(r['a_interval'])}, B {pct(r['b'])}% {span(r['b_interval'])}; "
              f"A - B {100 * r['difference']:+.1f} points {span(r['difference_interval'])} (paired bootstrap); "
              f"only A defends {r['only_a']}, only B {r['only_b']}")
    return 0
