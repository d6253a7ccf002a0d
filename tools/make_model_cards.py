"""Regenerate the shipped model folders' cards and MODEL_CARDS.md from what the repo ships.

Each folder under lwta_zoo/weights/ is exported again (``save_pretrained``) from its own weights
and config.json, so its config.json and README.md follow the current card code: the weights stay
byte for byte, the results of its reports (eval/*/report.json) are re-read from them, the training
record is kept as recorded. A folder of weights lwta_zoo does not redistribute (no model.safetensors)
gets its config.json and README.md the same way, from a model built by its config. Then
MODEL_CARDS.md lists the weights with their measurements (and how to convert those not
redistributed), the zoo's architectures without weights and the recipes that would train them,
and the papers' own figures, quoted as theirs. Once the five Table 4 models (lwta_zoo.table4) ship all
their reports, MODEL_CARDS.md gets the Table 4 section, and README.md's summary line (between the
``<!-- table4 -->`` and ``<!-- /table4 -->`` markers; printed if README has none) is rewritten from it.

    python tools/make_model_cards.py
"""
import json
import re
import shutil
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any, Dict, List, Optional

import timm
import torch
from safetensors.torch import load_file

import lwta_zoo
from lwta_zoo import table4
from lwta_zoo.hub import (
    CARD_FILE, CONFIG_FILE, SHIPPED_WEIGHTS, WEIGHTS_FILE, conversion, format_eps, load_pretrained, save_pretrained,
    shipped_weights,
)
from lwta_zoo.leaderboard import Figure, Row, boards, budget, report_folders
from lwta_zoo.leaderboard import rows as leaderboard_rows
from lwta_zoo.models import zoo_model_names
from lwta_zoo.recipe import load_recipe
from publishing import report_results

ROOT = Path(__file__).resolve().parents[1]
ROBUSTBENCH_ALIAS = re.compile(r'_(cifar10|cifar100|imagenet)_(linf|l2|corruptions)$')  # name_dataset_threat

PAPERS = """## The papers' own figures (quoted; not measured here)

WRN paper (Panousis, Chatzis, Theodoridis 2021), CIFAR-10 test set, eps 8/255, L=1, PGD adversarial
training; "Baseline" is the ReLU network of Wu et al. (2021):

| WRN-34-k | natural, baseline | natural, stochastic LWTA | PGD-20 (step 0.007), baseline | PGD-20, stochastic LWTA |
|---|---|---|---|---|
| 1 | 74.04 | 87.0 | 49.24 | 81.87 |
| 5 | 83.95 | 91.88 | 54.36 | 83.4 |
| 10 | 85.41 | 92.26 | 55.78 | 84.3 |

| WRN-34-k, stochastic LWTA | AutoAttack (Table 2) | APGD-CE + EoT 20 (Table 3) | APGD-DLR + EoT 20 (Table 3) |
|---|---|---|---|
| 1 | 74.71 | 79.67 | 76.15 |
| 5 | 81.22 | 81.67 | 77.65 |
| 10 | 82.60 | 82.55 | 79.00 |

The AISTATS paper (Panousis, Chatzis, Alexos, Theodoridis 2021) reports its MNIST and CIFAR-10
figures in its Tables 2-7 (ECOC networks; PGD, CW, Blind-Spot and Random attacks);
`python tools/aistats_report.py --param-counts` sets its parameter counts beside ours.
"""


def _committed_recipe(config: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The committed recipe that the recorded train command names, if its settings are still the recorded ones."""
    command = str((config.get('provenance') or {}).get('train_command') or '').split()
    path = next((w for w in command if w.startswith('recipes/') and w.endswith('.yaml')), None)
    if not (path and config.get('recipe') and (ROOT / path).is_file()):
        return None
    now = json.loads(json.dumps(load_recipe(ROOT / path, [w for w in command if '=' in w]).to_dict()))
    settings = ({k: v for k, v in r.items() if k != 'description'} for r in (now, config['recipe']))
    return now if next(settings) == next(settings) else None


def recard(folder: Path) -> None:
    """Export ``folder`` again from its own weights and config.json with the current card code.

    The results of its reports are re-read from eval/*/report.json (the data they name gets the
    description a seeded clean result gives the same file); the recipe's description, and the
    summary quoting it, follow the committed recipe when its settings are the recorded ones.
    """
    config = json.loads((folder / CONFIG_FILE).read_text())
    recipe, metrics, provenance = config.get('recipe'), dict(config['metrics']), dict(config.get('provenance') or {})
    now = _committed_recipe(config)
    if now and now['description'] != recipe['description']:
        provenance['summary'] = provenance['summary'].replace(recipe['description'].strip(), now['description'].strip())
        recipe = {**recipe, 'description': now['description']}
    seeded = [r for r in metrics['results'] if 'protocol_label' not in r]  # not from a report
    notes = {r['data'].split(':')[0]: r['data'] for r in seeded if 'data' in r}
    metrics['results'] = seeded + report_results(report_folders(folder), notes)
    shipped = (folder / WEIGHTS_FILE).is_file()  # False for weights lwta_zoo does not redistribute
    weights = {k: v.clone() for k, v in load_file(folder / WEIGHTS_FILE).items()} if shipped else None  # not a view
    model = (load_pretrained(folder) if shipped else timm.create_model(f'local-dir:{folder}')).eval()
    model.pretrained_cfg.pop('label_names', None)  # timm copies them in from config.json; the export writes them
    with TemporaryDirectory() as tmp:
        save_pretrained(model, folder if shipped else tmp, recipe=recipe, metrics=metrics, provenance=provenance)
        if not shipped:  # the untrained weights of the export stay behind
            for file in (CONFIG_FILE, CARD_FILE):
                shutil.copy(Path(tmp) / file, folder / file)
    again = load_file(folder / WEIGHTS_FILE) if shipped else {}  # model args recorded in the metadata may change
    if shipped and (again.keys() != weights.keys() or any(not torch.equal(again[k], weights[k]) for k in weights)):
        raise RuntimeError(f'{folder / WEIGHTS_FILE} changed on export; the weights must stay as they are')


def _pct(v: Any) -> str:
    return f'{100 * v:.1f}' if isinstance(v, (int, float)) else ''


def _figure(fig: Optional[Figure], row: Row, label: str = '', bold: bool = False) -> str:
    """'42.4 [39.4, 45.5]', then what it is and its n where they differ from the row's; '' without a figure."""
    if fig is None:
        return ''
    notes = [label] * bool(label) + [f'n={fig.n}'] * (fig.n != row.n)
    value = f'**{_pct(fig.value)}**' if bold else _pct(fig.value)
    return (f'{value} [{_pct(fig.interval[0])}, {_pct(fig.interval[1])}]'
            + (f" ({', '.join(notes)})" if notes else ''))


def _leaderboard_row(row: Row) -> str:
    """A leaderboard row (lwta_zoo.leaderboard: a model on one board under one prediction setting) as a table row."""
    m = row.model
    model = m.name + ('' if m.redistributed else ' (not redistributed)')
    hours = '' if m.hours is None else ('about ' if m.hours_estimated else '') + f'{m.hours:.1f}'
    facts = f"{m.epochs or ''} | {hours} | {m.parameters:,} | {m.U or ''} | {m.training}"
    if not row.reports:
        return f'| {model} | {m.dataset_name} | not evaluated | | | | | | | | {facts} | |'
    worst = _figure(row.worst, row, bold=True)
    if not row.worst:
        worst = row.status + (f" (without {', '.join(row.missing_adaptive)})" if row.missing_adaptive
                              and row.status == 'incomplete adaptive suite' else '')
    attacks = '; '.join(f'{f.name} ({f.protocol}) {_figure(f, row)}'
                        + (f' at median L2 {f.median_l2:.3g}' if f.median_l2 is not None else '')
                        for f in row.attacks if not f.part_of)
    claim = (f"; the {row.claim.paper}'s claim, not measured here ({row.claim.source}): "
             + ', '.join(f'{what} {v}%' for what, v in row.claim.figures) if row.claim else '')
    reports = '; '.join(f'{e.report} ({e.label}, R={e.repeats}, {e.data}): `{e.command}`' for e in row.reports)
    return (f'| {model}{claim} | {budget(row.threat_model, row.eps)} | L={row.samples}, {row.sampling} | {worst} | '
            f'{_figure(row.papers, row, row.papers.name if row.papers else "")} | '
            f'{_figure(row.autoattack, row, row.autoattack.name if row.autoattack else "")} | '
            f'{_figure(row.clean, row)} | {attacks} | {row.n} | {facts} | {reports} |')


def _published() -> List[str]:
    """The leaderboard's rows, board by board as the site ranks them; then the clean accuracy each config.json
    records from the export (seeded, not from a report)."""
    rows = ['| model | threat model | prediction | worst case (adaptive suite) | papers\' protocol | AutoAttack | clean '
            '| robust accuracy per attack | n | epochs | training hours | parameters | U | training attack | reports |',
            '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|']
    everything = leaderboard_rows()
    for board in boards(everything).values():
        rows += [_leaderboard_row(row) for row in board if row.reports]
    rows += [_leaderboard_row(row) for row in everything if not row.reports]  # once, not on each of its boards
    rows += ['', 'Clean accuracy recorded at export (seeded, each seed a full pass):', '',
             '| model | data | clean | samples | examples | seeds | command |', '|---|---|---|---|---|---|---|']
    for name in shipped_weights():
        metrics = json.loads((SHIPPED_WEIGHTS / name / CONFIG_FILE).read_text()).get('metrics') or {}
        rows += [f"| {name} | {r['data'].split(':')[0]} | {_pct(r['value'])} | {r.get('samples')} | {r.get('examples')} | "
                 f"{r.get('seeds')} | `{r.get('command')}` |"
                 for r in metrics.get('results', []) if 'protocol_label' not in r]  # each with its data, seeds, command
    return rows


def _not_redistributed() -> List[str]:
    """Why each measured model marked 'not redistributed' is not, and the one command that converts it."""
    lines = []
    for name in shipped_weights():
        record = conversion(name)
        if record:
            lines += [f"`{name}` (not redistributed): {record['reason']}. The rows above measure the weights "
                      f"converted from {record['source']}, sha256 {record['checkpoint_sha256']}. Convert it once "
                      f'(`LWTA_ZOO_WEIGHTS`: a folder of your choice); the import checks that sha256 and the '
                      f"converted tensors' ({record['tensors_sha256']}), and `pretrained=True` then "
                      'finds the weights:', '', f"    {record['command']}", '']
    return lines


def _unpublished() -> List[str]:
    published = {name.split('.')[0] for name in shipped_weights()}
    recipes: Dict[str, List[str]] = {}
    for path in sorted((ROOT / 'recipes').glob('*.yaml')):
        recipes.setdefault(load_recipe(path).model.name, []).append(f'`recipes/{path.name}`')  # extends: resolved
    rows = ['| architecture | recipes that train it |', '|---|---|']
    rows += [f"| {name} | {', '.join(recipes.get(name, [])) or 'none yet'} |"
             for name in zoo_model_names() if name not in published and not ROBUSTBENCH_ALIAS.search(name)]
    return rows


def _table4() -> List[str]:
    """MODEL_CARDS.md's Table 4 section, and README's summary line, once every Table 4 model ships its reports."""
    table = table4.rows()
    if not table4.complete(table):
        return []
    line = table4.summary_line(table)
    readme = (ROOT / 'README.md').read_text()
    start, end = '<!-- table4 -->', '<!-- /table4 -->'
    if start in readme and end in readme:
        head, rest = readme.split(start, 1)
        (ROOT / 'README.md').write_text(f'{head}{start}\n{line}\n{end}{rest.split(end, 1)[1]}')
        print('wrote README.md (the Table 4 summary line)')
    else:
        print(f'README.md has no {start} ... {end} markers; its Table 4 summary line:\n{line}')
    return table4.markdown(table)


def main() -> None:
    for name in shipped_weights():
        recard(SHIPPED_WEIGHTS / name)
        print(f'wrote lwta_zoo/weights/{name}/{CONFIG_FILE} and README.md')
    text = '\n'.join([
        '# Model cards', '',
        '<!-- written by `python tools/make_model_cards.py`; edit the tool, not this file -->', '',
        'Every figure below was measured by the command in its row, on the data it names, and is rerun '
        'by that command. The table is the leaderboard\'s (`lwta-zoo leaderboard --output DIR` renders the same rows, '
        'lwta_zoo/leaderboard/, as a static site: a sortable table per dataset and threat model, a plot of clean '
        'against worst-case accuracy, a page per model): a row per model, threat model and prediction setting (L, '
        'the samples a prediction averages, and how the model samples at test time), ranked by the worst case. '
        'Robust accuracy (docs/evaluating.md): per example, R fresh predictions of every '
        "candidate (the clean input and each attack's outputs inside the threat model) select the worst one, and R "
        'further independent predictions score it: defended when a majority are correct. The worst case is a '
        "report's per-example worst case over its attacks, within one threat model, and only a report that ran every "
        'attack of the adaptive preset (`lwta-zoo eval --preset adaptive`: attacks built for stochastic models) gives '
        'one; a row whose reports ran only the papers\' attacks says "not evaluated adaptively" and ranks below '
        'every evaluated row. "papers\' protocol" is the lowest of the papers\' own attacks ("WRN paper", '
        '"AISTATS paper"); each figure carries its 95% interval (Wilson), and its n where it differs from the '
        "row's (a subset). L2 attacks are the AISTATS paper's CW and Blind-Spot and the adaptive CW (unbounded "
        'minimal-perturbation attacks). The full settings, seeds, versions and machine are in each model card '
        '(lwta_zoo/weights/<model>/README.md) and in `lwta_zoo/weights/<model>/eval/*/report.json`. Where a paper '
        'reports a model\'s configuration, its own figures stand beside the model, labelled as the paper\'s claim.',
        '',
        f'lwta_zoo {lwta_zoo.__version__}.', '',
        '## Published weights', '', *_published(), '', *_not_redistributed(),
        'RobustBench names of published weights (`load_model(name, dataset, threat)` finds them through timm): '
        + ', '.join(f'`{n}`' for n in zoo_model_names() if ROBUSTBENCH_ALIAS.search(n)) + '.', '',
        *_table4(),
        '## Architectures without weights yet', '', *_unpublished(), '',
        PAPERS])
    (ROOT / 'MODEL_CARDS.md').write_text(text)
    print('wrote MODEL_CARDS.md')


if __name__ == '__main__':
    main()
