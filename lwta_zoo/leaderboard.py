"""The leaderboard: the shipped models' evaluation reports as rows, and the static site built from them.

``rows()`` reads every lwta_zoo/weights/<model>/eval/<run>/report.json (``lwta-zoo eval``'s
reports, as committed) into one row per report and threat model: clean accuracy, each attack, the
per-example worst case, n, R, L and the command; a model without a report gets one row that says
so. MODEL_CARDS.md's table (tools/make_model_cards.py) and the site render the same rows, so they
cannot disagree.

``lwta-zoo leaderboard --output DIR`` writes the site: a page per dataset and threat model (a
sortable table and a plot of clean against worst-case accuracy, the papers' protocol drawn as the
gap above each point) and a page per model (its rows, download snippets, its reports' plots and its
card). Plain HTML and CSS, a small inline script for sorting, images as files: it opens from the
file system, loads nothing from the network, and any static host serves it.
"""
from __future__ import annotations

import argparse
import html
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from . import __version__, hub, table4
from .attacks.suite import card_results, report_label

PAPERS_PROTOCOLS = ('WRN paper', 'AISTATS paper')  # the attacks' ``protocol`` values that are a paper's own
PLOTS = {  # figures lwta_zoo.attacks.plots writes beside a report, and what they show
    'robust_vs_eps.png': 'Robust accuracy against eps, per attack family',
    'winner_probabilities.png': "Mean winning probability per unit and true class, benign and PGD inputs "
                                "(the AISTATS paper's Figure 2)",
    'logit_trajectories.png': "Logits of one example along a PGD attack, the model's own gradient beside the "
                              "mean surrogate (the AISTATS paper's Figure 3)",
}
BoardKey = Tuple[str, Optional[str], Optional[float]]  # dataset, threat model, eps


@dataclass(frozen=True)
class Figure:
    """One accuracy a report gives: the majority accuracy in [0, 1] and its 95% interval (reports of format 2)."""

    name: str  # 'clean', the attack ('pgd20'), a part of one ('autoattack_rand apgd-ce') or 'worst case'
    value: float
    interval: Optional[Tuple[float, float]] = None
    protocol: Optional[str] = None  # an attack's: 'WRN paper', 'AISTATS paper' or 'adaptive'
    threat_model: Optional[str] = None  # 'Linf', 'L2', or joined ('L2+Linf') for a worst case of format 1
    part_of: Optional[str] = None  # the attack a part belongs to
    median_l2: Optional[float] = None  # an L2 attack's median distance over the adversarials it found


@dataclass(frozen=True)
class Row:
    """A model's figures from one report under one threat model; without ``report``: not evaluated."""

    model: str  # arch.tag
    architecture: str  # 'aistats_softmax_mnist (lwta)': the architecture and its activation
    activation: str  # 'relu', 'lwta', 'lwta_ibp', ...
    training: str
    redistributed: bool  # False: lwta_zoo ships the card and the reports, not the weights
    dataset: str
    dataset_name: str
    report: Optional[str] = None  # the report's folder beside the weights, 'eval/<run>'
    data: Optional[str] = None  # what the report evaluated on (a dataset name or an .npz)
    protocol: Optional[str] = None  # sampling and n, e.g. 'exact samples, n=1000'
    threat_model: Optional[str] = None
    eps: Optional[float] = None
    clean: Optional[Figure] = None
    attacks: Tuple[Figure, ...] = ()  # every attack of the worst case, then its parts, in the report's order
    worst: Optional[Figure] = None
    n: Optional[int] = None
    repeats: Optional[int] = None  # R
    samples: Optional[int] = None  # L
    command: Optional[str] = None

    @property
    def board(self) -> BoardKey:
        return self.dataset, self.threat_model, self.eps

    @property
    def papers(self) -> Optional[Figure]:
        """The papers' protocol: the lowest accuracy among the row's attacks that are a paper's own."""
        own = [f for f in self.attacks if f.protocol in PAPERS_PROTOCOLS and not f.part_of]
        return min(own, key=lambda f: f.value) if own else None


def budget(threat_model: Optional[str], eps: Optional[float]) -> str:
    """'Linf, eps 8/255', 'L2, unbounded', 'L2+Linf, eps 0.1' (a worst case over both), 'not evaluated'."""
    if threat_model is None:
        return 'not evaluated'
    if eps is None:
        return f'{threat_model}, unbounded'
    return f'{threat_model}, eps {hub.format_eps(eps)}'


def report_folders(folder: Path) -> List[Path]:
    """The eval/<run> folders of a model folder that hold a report.json: in the order its config.json records
    their results, then any others by name."""
    found = [p.parent for p in sorted((folder / 'eval').glob('*/report.json'))]
    results = (json.loads((folder / hub.CONFIG_FILE).read_text()).get('metrics') or {}).get('results', [])
    recorded = [folder / f for f in dict.fromkeys(map(hub.report_folder, results)) if f and folder / f in found]
    return recorded + [p for p in found if p not in recorded]


def _training(config: Dict[str, Any], name: str) -> str:
    """How the weights were trained, in a few words: the recipe's adversarial training, or where they come from."""
    recipe = config.get('recipe')
    if hub.conversion(name):
        return "the authors' checkpoint, converted"
    if not recipe:
        return 'not recorded'
    adversary, epochs = recipe.get('adversary') or {}, (recipe.get('train') or {}).get('epochs')
    method = adversary.get('method', 'none')
    attack = {'none': 'standard training', 'pgd': f"PGD-{adversary.get('steps')}", 'fgsm': 'FGSM',
              'trades': f"TRADES (beta {adversary.get('trades_beta')})"}.get(method, method)
    if method != 'none':
        attack += f" at eps {hub.format_eps(adversary['eps'])}, {adversary.get('gradient', 'model')} gradient"
    return attack + (f', {epochs} epoch(s)' if epochs else '')


def _figure(result: Dict[str, Any], results: List[Dict[str, Any]], name: str) -> Figure:
    interval = result.get('interval')
    return Figure(name=name, value=result['value'], interval=tuple(interval) if interval else None,
                  protocol=result.get('protocol'), threat_model=hub.threat_model(result, results),
                  part_of=result.get('part_of'), median_l2=result.get('median_l2'))


def model_rows(name: str) -> List[Row]:
    """The rows of shipped model ``name``: one per report and threat model, or one 'not evaluated'."""
    folder = hub.SHIPPED_WEIGHTS / name
    config = json.loads((folder / hub.CONFIG_FILE).read_text())
    args = config.get('model_args') or {}
    activation = str(args.get('method') or args.get('act') or 'relu')
    dataset = hub._dataset(config.get('recipe'), config.get('metrics')) or 'unknown dataset'
    model = dict(model=name, architecture=f"{config['architecture']} ({activation})", activation=activation,
                 training=_training(config, name), redistributed=hub.conversion(name) is None, dataset=dataset,
                 dataset_name=(config.get('metrics') or {}).get('dataset_name') or dataset)
    rows = []
    for run in report_folders(folder):
        report = json.loads((run / 'report.json').read_text())
        clean, *results = card_results(report, report_label(report))  # clean, the attacks (and parts), worst cases
        attacks = [(r, _figure(r, results, hub._attack_name(r))) for r in results if 'over' not in r]
        for worst in (r for r in results if 'over' in r):
            over = [f for r, f in attacks if (f.part_of or f.name) in worst['over']]
            eps = worst['eps'] if 'eps' in worst else next(  # format 1: the Linf budget of its attacks
                (r['eps'] for r, f in attacks if f in over and r.get('eps') is not None), None)
            rows.append(Row(**model, report=run.relative_to(folder).as_posix(), data=report.get('data'),
                            protocol=report_label(report), threat_model=hub.threat_model(worst, results), eps=eps,
                            clean=_figure(clean, results, 'clean'), attacks=tuple(over),
                            worst=_figure(worst, results, 'worst case'), n=report['n'], repeats=report['repeats'],
                            samples=report.get('samples'), command=report.get('command')))
    return rows or [Row(**model)]


def rows() -> List[Row]:
    """The rows of every shipped model (``lwta_zoo.hub.shipped_weights()``), by model."""
    return [row for name in hub.shipped_weights() for row in model_rows(name)]


# ----------------------------------------------------------------------------------------------
# The site

STYLE = """\
:root { --fg: #1f2328; --muted: #59636e; --line: #d1d9e0; --head: #f6f8fa; --accent: #0b5cad; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg); }
a { color: var(--accent); }
header { background: #1f2328; color: #fff; padding: .6rem 1rem; display: flex; flex-wrap: wrap; gap: .2rem 1.2rem;
         align-items: baseline; }
header a { color: #fff; text-decoration: none; }
header .brand { font-weight: 700; }
header nav { display: flex; flex-wrap: wrap; gap: .2rem 1rem; font-size: .9rem; }
header nav a { color: #c9d7ff; }
main { max-width: 1400px; margin: 0 auto; padding: 1rem; }
h1 { font-size: 1.45rem; margin: .3rem 0 .6rem; overflow-wrap: anywhere; }
h2 { font-size: 1.15rem; margin: 1.6rem 0 .5rem; }
p, li { max-width: 80ch; }
.muted, small { color: var(--muted); }
.scroll { overflow-x: auto; border: 1px solid var(--line); border-radius: 6px; }
table { border-collapse: collapse; width: 100%; font-size: .88rem; }
th, td { padding: .4rem .55rem; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
thead th { background: var(--head); white-space: nowrap; }
tbody tr:last-child td { border-bottom: 0; }
.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
td small, th small { display: block; font-size: .74rem; font-weight: normal; white-space: normal; }
td small.ci { white-space: nowrap; }
p, li, .card td { overflow-wrap: anywhere; }
td.model { min-width: 12rem; max-width: 17rem; overflow-wrap: anywhere; }
a.model-name small { display: block; font-weight: normal; }
td.model a { font-weight: 600; }
td.worst { font-weight: 700; }
td.wide { min-width: 9rem; max-width: 14rem; }
th button { font: inherit; font-weight: 700; color: inherit; background: none; border: 0; padding: 0; cursor: pointer;
            text-align: inherit; }
th button::after { content: " \\2195"; color: var(--muted); font-weight: normal; }
th[aria-sort=ascending] button::after { content: " \\25B2"; color: var(--fg); }
th[aria-sort=descending] button::after { content: " \\25BC"; color: var(--fg); }
tr.not-evaluated td { color: var(--muted); background: #fafbfc; }
details summary { cursor: pointer; color: var(--accent); font-size: .8rem; }
details code { display: block; width: 18rem; white-space: pre-wrap; overflow-wrap: anywhere; font-size: .72rem; }
figure { margin: 1rem 0; }
figure img { display: block; width: 100%; max-width: 680px; height: auto; border: 1px solid var(--line);
             border-radius: 6px; background: #fff; }
.intro { display: grid; grid-template-columns: minmax(0, 1fr); gap: 0 2rem; align-items: start; }
@media (min-width: 1100px) { .intro { grid-template-columns: minmax(0, 1fr) minmax(0, 680px); } }
figcaption { color: var(--muted); font-size: .85rem; max-width: 80ch; }
pre { overflow-x: auto; background: var(--head); padding: .7rem; border-radius: 6px; font-size: .8rem; }
code { font-size: .88em; }
.card { border-top: 1px solid var(--line); margin-top: 1.5rem; }
.card table { display: block; overflow-x: auto; }
ul.boards li, ul.models li { margin: .3rem 0; }
ul.models a.model-name small { display: inline; }
@media (max-width: 640px) {
  body { font-size: 14px; }
  td.model { min-width: 9.5rem; }
  main { padding: .6rem; }
  th, td { padding: .3rem .4rem; }
  h1 { font-size: 1.2rem; }
}
"""

SORT_SCRIPT = """\
document.querySelectorAll('table.board th[data-sort] button').forEach(function (button) {
  button.addEventListener('click', function () {
    var th = button.closest('th'), table = th.closest('table'), col = th.cellIndex;
    var ascending = th.getAttribute('aria-sort') !== 'ascending';
    table.querySelectorAll('th[aria-sort]').forEach(function (h) { h.removeAttribute('aria-sort'); });
    th.setAttribute('aria-sort', ascending ? 'ascending' : 'descending');
    var key = function (tr) { var v = tr.cells[col].dataset.value; return v === undefined ? '' : v; };
    var rows = Array.prototype.slice.call(table.tBodies[0].rows).sort(function (a, b) {
      var x = key(a), y = key(b);
      if (x === '' || y === '') return (x === '') - (y === '');  /* no figure: always last */
      var d = th.dataset.sort === 'number' ? parseFloat(x) - parseFloat(y) : x.localeCompare(y);
      return ascending ? d : -d;
    });
    rows.forEach(function (tr) { table.tBodies[0].appendChild(tr); });
  });
});
"""

ACTIVATION_COLOURS = {'relu': '#4e79a7', 'lwta_max': '#76b7b2', 'lwta': '#e15759', 'lwta_ibp': '#f28e2b',
                      'lwta_max_ibp': '#59a14f'}


def _e(text: Any) -> str:
    return html.escape(str(text))


def _pct(value: float) -> str:
    return f'{100 * value:.1f}'


def _slug(*parts: Any) -> str:
    return re.sub(r'[^a-z0-9]+', '-', ' '.join(str(p) for p in parts if p is not None).lower()).strip('-')


def _board_file(key: BoardKey) -> str:
    dataset, threat_model, eps = key
    return _slug(dataset, threat_model or 'not evaluated', hub.format_eps(eps) if eps is not None else None) + '.html'


def _model_file(name: str) -> str:
    return f'models/{name}/index.html'


def _figure_cell(fig: Optional[Figure], css: str = 'num') -> str:
    if fig is None:
        return f'<td class="{css}">&ndash;</td>'
    interval = (f'<small class="ci">{_pct(fig.interval[0])}&ndash;{_pct(fig.interval[1])}</small>'
                if fig.interval else '')
    title = ('95% interval (Wilson)' if fig.interval else 'no interval in this report (format 1)')
    return f'<td class="{css}" data-value="{fig.value!r}" title="{title}">{_pct(fig.value)}{interval}</td>'


def _papers_cell(row: Row) -> str:
    papers = row.papers
    if papers is None:
        return '<td class="num">&ndash;</td>'
    return (f'<td class="num" data-value="{papers.value!r}" title="the lowest of the papers\' own attacks">'
            f'{_pct(papers.value)}<small>{_e(papers.name)}</small></td>')


def _model_link(name: str, href: str) -> str:
    """A link naming a model, the architecture on a line above its tag, so that it wraps on narrow screens."""
    arch, _, tag = name.rpartition('.')
    return (f'<a class="model-name" href="{_e(href)}">' + (f'<small>{_e(arch)}.</small>' if arch else '')
            + '<wbr>'.join(_e(p) for p in re.split(r'(?<=_)', tag)) + '</a>')


def _page(title: str, body: str, boards: Dict[BoardKey, List[Row]], root: str = '', script: str = '') -> str:
    nav = ''.join(f'<a href="{root}{_board_file(k)}">{_e(rows_[0].dataset_name)} &middot; {_e(budget(*k[1:]))}</a>'
                  for k, rows_ in boards.items())
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)} &middot; lwta_zoo leaderboard</title>
<link rel="stylesheet" href="{root}style.css">
</head>
<body>
<header><a class="brand" href="{root}index.html">lwta_zoo leaderboard</a><nav>{nav}</nav></header>
<main>
{body}
</main>
{f'<script>{script}</script>' if script else ''}
</body>
</html>
"""


def _attack_columns(board_rows: List[Row]) -> Dict[str, str]:
    """The attacks of a board (not their parts), each a column: name -> protocol, the papers' own first."""
    found = {f.name: f.protocol for r in board_rows for f in r.attacks if not f.part_of}
    return dict(sorted(found.items(), key=lambda item: item[1] not in PAPERS_PROTOCOLS))


def _board_table(board_rows: List[Row]) -> str:
    """The board's table: the figures first (the worst case beside the model, where a phone shows it without
    scrolling, then clean, the papers' protocol and each attack), then what they were measured with and on;
    each cell's ``data-value`` is what sorting compares."""
    attacks = _attack_columns(board_rows)
    heads = ([('#', 'number', 'num'), ('model', 'text', ''), ('worst case', 'number', 'num'),
              ('clean', 'number', 'num'), ("papers' protocol", 'number', 'num')]
             + [(f'{_e(a)}<small>{_e(protocol)}</small>', 'number', 'num') for a, protocol in attacks.items()]
             + [('n', 'number', 'num'), ('R', 'number', 'num'), ('L', 'number', 'num'), ('architecture', 'text', ''),
                ('training', 'text', ''), ('command', '', '')])
    head = ''.join(f'<th class="{css}" data-sort="{kind}"'
                   + (' aria-sort="descending"' if label == 'worst case' else '')
                   + f'><button type="button">{label}</button></th>' if kind else f'<th>{label}</th>'
                   for label, kind, css in heads)
    body = []
    for i, r in enumerate(board_rows, 1):
        report = f'{_model_file(r.model).rsplit("/", 1)[0]}/{r.report}/report.md'
        evaluation = (f'<small>{_e(r.protocol)} &middot; {_e(r.data)} &middot; <a href="{_e(report)}">report</a>'
                      '</small>' if r.report else '<small>not evaluated</small>')
        model = (f'<td class="model" data-value="{_e(r.model)}">{_model_link(r.model, _model_file(r.model))}'
                 + ('' if r.redistributed else '<small>not redistributed</small>') + f'{evaluation}</td>')
        about = [f'<td data-value="{_e(r.architecture)}">{_e(r.architecture)}</td>',
                 f'<td class="wide" data-value="{_e(r.training)}">{_e(r.training)}</td>']
        if r.report is None:
            dashes = ['<td class="num">&ndash;</td>'] * (len(attacks) + 6)
            cells = [f'<td class="num" data-value="{i}">{i}</td>', model, *dashes, *about, '<td></td>']
            body.append(f'<tr class="not-evaluated" data-model="{_e(r.model)}">{"".join(cells)}</tr>')
            continue
        by_name = {f.name: f for f in r.attacks}
        cells = [f'<td class="num" data-value="{i}">{i}</td>', model, _figure_cell(r.worst, 'num worst'),
                 _figure_cell(r.clean), _papers_cell(r), *(_figure_cell(by_name.get(a)) for a in attacks),
                 *(f'<td class="num" data-value="{v}">{v}</td>' for v in (r.n, r.repeats, r.samples)), *about,
                 f'<td><details><summary>command</summary><code>{_e(r.command)}</code></details></td>']
        body.append(f'<tr data-model="{_e(r.model)}" data-report="{_e(r.report)}" '
                    f'data-threat="{_e(budget(r.threat_model, r.eps))}">{"".join(cells)}</tr>')
    return (f'<div class="scroll"><table class="board"><thead><tr>{head}</tr></thead>'
            f'<tbody>\n{chr(10).join(body)}\n</tbody></table></div>')


def plot_board(board_rows: List[Row], path: Path) -> None:
    """Clean against worst-case accuracy, one point per row (numbered as in the table); a bar up to the
    papers' protocol shows how much higher that protocol puts the row's robust accuracy."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    evaluated = [(i, r) for i, r in enumerate(board_rows, 1) if r.report is not None]
    xs = [100 * r.clean.value for _, r in evaluated]
    ys = [100 * f.value for _, r in evaluated for f in (r.worst, r.papers or r.worst, r.clean)]
    fig, ax = plt.subplots(figsize=(4.8, 3.4))
    ax.axline((0, 0), slope=1, color='0.6', ls=':', lw=1)
    seen: Dict[str, str] = {}
    for i, r in evaluated:
        colour = seen.setdefault(r.activation, ACTIVATION_COLOURS.get(r.activation, f'C{len(seen)}'))
        x, y = 100 * r.clean.value, 100 * r.worst.value
        if r.papers is not None:
            top = 100 * r.papers.value
            ax.plot([x, x], [y, top], color=colour, lw=4, alpha=0.35, solid_capstyle='butt')
            ax.plot(x, top, marker='_', ms=14, mew=2, color=colour)
        ax.plot(x, y, 'o', color=colour, ms=7, mec='white', mew=0.8)
        ax.annotate(str(i), (x, y), xytext=(5, -2), textcoords='offset points', fontsize=9, va='top')
    handles = [Line2D([], [], ls='', marker='o', color=c, label=a) for a, c in seen.items()]
    handles += [Line2D([], [], ls='', marker='o', color='0.3', label='worst case (every attack)'),
                Line2D([], [], marker='_', ms=14, mew=2, lw=4, color='0.3', alpha=0.6,
                       label="papers' protocol (top of the bar)"),
                Line2D([], [], ls=':', lw=1, color='0.6', label='robust = clean')]
    ax.legend(handles=handles, fontsize=7.5, loc='upper center', bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)
    pad = max(3.0, 0.08 * (max(xs) - min(xs)))
    ax.set(xlabel='clean accuracy (%)', ylabel='robust accuracy (%)',
           xlim=(max(0, min(xs) - pad), min(100, max(xs) + pad)), ylim=(max(-4, min(ys) - 5), min(100, max(ys) + 5)))
    ax.tick_params(labelsize=8)
    ax.xaxis.label.set_size(9)
    ax.yaxis.label.set_size(9)
    ax.grid(alpha=0.3)
    fig.savefig(path, format='svg', bbox_inches='tight', metadata={'Date': None})
    plt.close(fig)


def _board_page(key: BoardKey, board_rows: List[Row], boards: Dict[BoardKey, List[Row]], plot: str) -> str:
    dataset, threat_model, eps = key
    title = f'{board_rows[0].dataset_name} · {budget(threat_model, eps)}'
    about = ("The worst case is per example over every attack of the row's threat model; the papers' protocol "
             "is the lowest of the papers' own attacks (PGD-20 on the model's own gradient, AutoAttack, the "
             "AISTATS paper's PGD, CW and Blind-Spot); the attacks marked adaptive attack the expectation (mean "
             "surrogate, straight-through, EoT). An input counts as defended when a majority of R fresh "
             "stochastic predictions classify it correctly; L is the number of samples a prediction averages; "
             "small figures under a value are its 95% interval. Click a column's name to sort.")
    if threat_model and '+' in threat_model:
        about += (' These reports (format 1) take one worst case over attacks of several threat models, which '
                  'later reports keep apart.')
    figure = (f'<figure><img src="{plot}" alt="clean against worst-case accuracy, {_e(title)}">'
              '<figcaption>Each point is a row of the table (its number): clean accuracy against the worst case; '
              "the bar above it reaches the papers' protocol, so its length is what the adaptive attacks find "
              "that the papers' protocol does not.</figcaption></figure>" if threat_model else '')
    body = (f'<h1>{_e(title)}</h1>\n<div class="intro"><p class="muted">{about}</p>\n{figure}</div>\n'
            f'{_board_table(board_rows)}')
    return _page(title, body, boards, script=SORT_SCRIPT)


def _snippets(name: str) -> str:
    """How to get the weights: timm, torch.hub and the Hugging Face Hub (or, not redistributed, the conversion)."""
    from .models import HF_ORG  # lwta_zoo.models imports lwta_zoo.hub; this module is imported by the CLI

    hub_repo = hub.CODE_REPOSITORY.split('github.com/')[-1]
    install = f'pip install "lwta_zoo @ git+{hub.CODE_REPOSITORY}"'
    record = hub.conversion(name)
    if record:
        return (f"<p>lwta_zoo does not redistribute these weights ({_e(record['reason'])}). Convert "
                f"{_e(record['source'])} once; then timm and torch.hub find them:</p>"
                f"<pre><code>{_e(install)}\nexport {hub.MIRROR_ENV}=$HOME/lwta_zoo_weights  # any folder\n"
                f"{_e(record['command'])}</code></pre>"
                f"<pre><code>import timm, torch\nimport lwta_zoo  # registers the architectures\n\n"
                f"model = timm.create_model('{_e(name)}', pretrained=True)\n"
                f"model = torch.hub.load('{_e(hub_repo)}', '{_e(name)}', pretrained=True)</code></pre>")
    return (f'<pre><code>{_e(install)}</code></pre>'
            f'<h3>timm</h3><pre><code>import timm\nimport lwta_zoo  # registers the architectures\n\n'
            f"model = timm.create_model('hf-hub:{HF_ORG}/{_e(name)}', pretrained=True)\n"
            f"model = timm.create_model('{_e(name)}', pretrained=True)  # the copy the package ships</code></pre>"
            f"<h3>torch.hub</h3><pre><code>import torch\n\n"
            f"model = torch.hub.load('{_e(hub_repo)}', '{_e(name)}', pretrained=True)</code></pre>"
            f'<h3>Hugging Face Hub</h3><pre><code>from huggingface_hub import snapshot_download\n\n'
            f"folder = snapshot_download('{HF_ORG}/{_e(name)}')  # model.safetensors, config.json, README.md"
            '</code></pre>')


def _card_html(folder: Path) -> str:
    """The model card (README.md) as HTML, without its YAML metadata (the Hub's model-index)."""
    from huggingface_hub import ModelCard
    from markdown_it import MarkdownIt

    text = ModelCard((folder / hub.CARD_FILE).read_text(encoding='utf-8'), ignore_metadata_errors=True).text
    return MarkdownIt('commonmark', {'html': False}).enable('table').render(text)  # as the Hub renders cards


def _model_page(name: str, model_rows_: List[Row], boards: Dict[BoardKey, List[Row]]) -> str:
    folder = hub.SHIPPED_WEIGHTS / name
    r0 = model_rows_[0]
    items = []
    for r in model_rows_:
        if r.report is None:
            items.append('<li>not evaluated: no report ships with this model</li>')
            continue
        attacks = '; '.join(f'{_e(f.name)} ({_e(f.protocol)}) {_pct(f.value)}' for f in r.attacks)
        items.append(f'<li><a href="../../{_board_file(r.board)}">{_e(budget(r.threat_model, r.eps))}</a>, '
                     f'{_e(r.protocol)}, <a href="{_e(r.report)}/report.md">{_e(r.report)}</a>: clean '
                     f'{_pct(r.clean.value)}, worst case <strong>{_pct(r.worst.value)}</strong> (n={r.n}, '
                     f'R={r.repeats}, L={r.samples}); {attacks}</li>')
    plots = ''.join(f'<figure><img src="{_e(p.relative_to(folder).as_posix())}" alt="{_e(PLOTS.get(p.name, p.stem))}">'
                    f'<figcaption>{_e(PLOTS.get(p.name, p.stem))} ({_e(p.parent.relative_to(folder).as_posix())})'
                    '</figcaption></figure>'
                    for run in report_folders(folder) for p in sorted(run.glob('*.png')))
    body = (f'<h1>{_e(name)}</h1>'
            f'<p class="muted">{_e(r0.architecture)} &middot; {_e(r0.dataset_name)} &middot; {_e(r0.training)}</p>'
            f'<h2>Results</h2><ul>{"".join(items)}</ul>'
            f'<h2>Get the weights</h2>{_snippets(name)}'
            + (f'<h2>Plots</h2>{plots}' if plots else '')
            + f'<div class="card">{_card_html(folder)}</div>')
    return _page(name, body, boards, root='../../')


def _boards(all_rows: List[Row]) -> Dict[BoardKey, List[Row]]:
    """Rows by dataset and threat model; a model without a report is on every board of its dataset (on its own
    where its dataset has no other)."""
    order = sorted({r.board for r in all_rows if r.report},
                   key=lambda k: (k[0], k[1], -1 if k[2] is None else k[2]))
    order += [(d, None, None) for d in dict.fromkeys(r.dataset for r in all_rows if not r.report)
              if not any(k[0] == d for k in order)]
    boards = {}
    for key in order:
        evaluated = [r for r in all_rows if r.report and r.board == key]
        evaluated.sort(key=lambda r: -r.worst.value)  # the most robust first, as leaderboards list them
        boards[key] = evaluated + [r for r in all_rows if not r.report and r.dataset == key[0]]
    return boards


def _table4_page(table: List[table4.Table4Row], boards: Dict[BoardKey, List[Row]]) -> str:
    """The AISTATS paper's Table 4 beside the zoo's Fashion-MNIST rows (lwta_zoo.table4; table4.json holds them)."""
    head = ''.join(f'<th>{_e(h)}</th>' for h in table4.HEADER)
    body = ''.join('<tr>' + ''.join(f'<td>{_e(c)}</td>' for c in row) + '</tr>' for row in table4.cells(table))
    return _page("The AISTATS paper's Table 4", f"""<h1>The AISTATS paper's Table 4 on Fashion-MNIST</h1>
<p>{_e(table4.PROTOCOL)}</p>
<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>
<p>{_e(table4.conclusion(table))}</p><p><a href="table4.json">table4.json</a></p>""", boards)


def _index(boards: Dict[BoardKey, List[Row]], models: Dict[str, Row], with_table4: bool = False) -> str:
    links = ''.join(f'<li><a href="{_board_file(k)}">{_e(rows_[0].dataset_name)} &middot; {_e(budget(*k[1:]))}</a>'
                    '</li>' for k, rows_ in boards.items())
    model_links = ''.join(f'<li>{_model_link(m, _model_file(m))} <span class="muted">&middot; {_e(r.architecture)} '
                          f'&middot; {_e(r.dataset_name)} &middot; {_e(r.training)}</span></li>'
                          for m, r in models.items())
    body = f"""<h1>Stochastic defenses, evaluated adaptively</h1>
<p>Every model lwta_zoo publishes, its accuracy under the papers' own attack protocol beside the worst case
that adaptive attacks (built for stochastic models: mean surrogate, straight-through and EoT gradients) find,
ReLU networks beside stochastic LWTA ones. Every figure is read from the model's committed report
(<code>lwta_zoo/weights/&lt;model&gt;/eval/&lt;run&gt;/report.json</code>, written by <code>lwta-zoo eval</code>);
a model without a report is listed as not evaluated. Written by <code>lwta-zoo leaderboard</code>
(lwta_zoo {_e(__version__)}); MODEL_CARDS.md lists the same rows.</p>
<h2>By dataset and threat model</h2><ul class="boards">{links}</ul>
{'<h2>Papers</h2><ul><li><a href="table4.html">The AISTATS paper&#39;s Table 4 on Fashion-MNIST</a></li></ul>'
 if with_table4 else ''}
<h2>Models</h2><ul class="models">{model_links}</ul>"""
    return _page('Leaderboard', body, boards)


def write_site(output: Path) -> List[Path]:
    """Write the site into ``output`` (created; files already there are replaced); returns the pages."""
    names = hub.shipped_weights()
    if not names:
        raise ValueError(f'no shipped models in {hub.SHIPPED_WEIGHTS}: nothing to list')
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    all_rows = rows()
    boards = _boards(all_rows)
    (output / 'style.css').write_text(STYLE, encoding='utf-8')
    pages = [output / 'index.html']
    table = table4.rows()
    with_table4 = table4.complete(table)  # once the five Table 4 models ship all their reports
    pages[0].write_text(_index(boards, {r.model: r for r in all_rows}, with_table4), encoding='utf-8')
    if with_table4:
        (output / 'table4.json').write_text(table4.to_json(table), encoding='utf-8')
        pages.append(output / 'table4.html')
        pages[-1].write_text(_table4_page(table, boards), encoding='utf-8')
    for key, board_rows in boards.items():
        page = output / _board_file(key)
        plot = page.with_suffix('.svg')
        if key[1]:
            plot_board(board_rows, plot)
        page.write_text(_board_page(key, board_rows, boards, plot.name), encoding='utf-8')
        pages.append(page)
    for name in names:
        target = output / _model_file(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        for run in report_folders(hub.SHIPPED_WEIGHTS / name):  # the reports the pages link to, and their plots
            shutil.copytree(run, target.parent / run.relative_to(hub.SHIPPED_WEIGHTS / name), dirs_exist_ok=True)
        target.write_text(_model_page(name, [r for r in all_rows if r.model == name], boards), encoding='utf-8')
        pages.append(target)
    return pages


def configure_leaderboard(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``lwta-zoo leaderboard``."""
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument('--output', required=True, help='folder for the site (index.html and the pages it links)')
    parser.set_defaults(func=run_leaderboard)


def run_leaderboard(args: argparse.Namespace) -> int:
    pages = write_site(Path(args.output))
    print(f'wrote {pages[0]} and {len(pages) - 1} pages it links')
    return 0
