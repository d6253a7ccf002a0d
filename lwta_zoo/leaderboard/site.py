"""The leaderboard's static site: the front page (every board's sortable table and its plot of clean against
worst-case accuracy) and a page per model, rendered from the jinja2 templates beside this module (autoescaped);
the CSS and the sorting script are package files copied beside the pages.

The output folder is guarded: a folder that holds files lwta-zoo leaderboard did not write is refused unless
``overwrite``, and a folder it wrote (marked by ``MARKER``, which lists its files) has those files replaced, so a
page of a board that is gone does not stay behind. A site inside a model's eval/ folder (what ``lwta-zoo push``
uploads) is refused.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

from .. import __version__, hub, table4
from ..models import HF_ORG
from .rows import PAPERS_PROTOCOLS, STATUSES, BoardKey, Row, boards, budget, report_folders, rows

MARKER = '.lwta-zoo-leaderboard.json'  # in an output folder this command wrote: the files it wrote there
STATIC = Path(__file__).resolve().parent / 'static'
PLOTS = {  # figures lwta_zoo.attacks.plots writes beside a report, and what they show
    'robust_vs_eps.png': 'Robust accuracy against eps, per attack family',
    'winner_probabilities.png': "Mean winning probability per unit and true class, benign and PGD inputs "
                                "(the AISTATS paper's Figure 2)",
    'logit_trajectories.png': "Logits of one example along a PGD attack, the model's own gradient beside the "
                              "mean surrogate (the AISTATS paper's Figure 3)",
}
ACTIVATION_COLOURS = {'relu': '#4e79a7', 'lwta_max': '#76b7b2', 'lwta': '#e15759', 'lwta_ibp': '#f28e2b',
                      'lwta_max_ibp': '#59a14f'}


def _slug(*parts: Any) -> str:
    return re.sub(r'[^a-z0-9]+', '-', ' '.join(str(p) for p in parts if p is not None).lower()).strip('-')


def board_id(key: BoardKey) -> str:
    """The board's anchor on the front page, and the stem of its plot's file."""
    dataset, threat_model, eps = key
    return _slug(dataset, threat_model or 'not evaluated', hub.format_eps(eps) if eps is not None else None)


def model_folder(name: str) -> str:
    return f'models/{name}'


def _attack_columns(board: List[Row]) -> Dict[str, str]:
    """The attacks of a board (not their parts), each a column: name -> protocol, the papers' own first."""
    found = {f.name: f.protocol for r in board for f in r.attacks if not f.part_of}
    return dict(sorted(found.items(), key=lambda item: item[1] not in PAPERS_PROTOCOLS))


def _environment() -> Environment:
    env = Environment(loader=PackageLoader('lwta_zoo.leaderboard'), autoescape=select_autoescape(['html']),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters['pct'] = lambda value: f'{100 * value:.1f}'
    env.globals.update(
        board_id=board_id, budget=budget, model_file=lambda name: f'{model_folder(name)}/index.html',
        model_folder=model_folder, statuses=STATUSES, attack_columns=_attack_columns, version=__version__,
        board_title=lambda key, board: f'{board[0].model.dataset_name} · {budget(*key[1:])}',
        split_name=lambda name: (name.rpartition('.')[0], re.split(r'(?<=_)', name.rpartition('.')[2])),
        attack_figures=lambda row: {f.name: f for f in row.attacks})
    return env


def table4_page(table: List[table4.Table4Row], by_board: Dict[BoardKey, List[Row]]) -> str:
    """The AISTATS paper's Table 4 beside the zoo's Fashion-MNIST rows (lwta_zoo.table4; table4.json holds them)."""
    return _environment().get_template('table4.html').render(
        boards=by_board, title="The AISTATS paper's Table 4", root='', protocol=table4.PROTOCOL, header=table4.HEADER,
        cells=table4.cells(table), conclusion=table4.conclusion(table))


def plot_board(board: List[Row], path: Path) -> bool:
    """Clean against worst-case accuracy, one point per row with an adaptive worst case (numbered as in the
    table); a bar to the papers' protocol shows how far that protocol is from the worst case. False: no such row."""
    evaluated = [(i, r) for i, r in enumerate(board, 1) if r.worst is not None]
    if not evaluated:
        return False
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    xs = [100 * r.clean.value for _, r in evaluated]
    ys = [100 * f.value for _, r in evaluated for f in (r.worst, r.papers or r.worst, r.clean)]
    fig, ax = plt.subplots(figsize=(4.8, 3.4))
    ax.axline((0, 0), slope=1, color='0.6', ls=':', lw=1)
    seen: Dict[str, str] = {}
    for i, r in evaluated:
        colour = seen.setdefault(r.model.activation, ACTIVATION_COLOURS.get(r.model.activation, f'C{len(seen)}'))
        x, y = 100 * r.clean.value, 100 * r.worst.value
        if r.papers is not None:
            top = 100 * r.papers.value
            ax.plot([x, x], [y, top], color=colour, lw=4, alpha=0.35, solid_capstyle='butt')
            ax.plot(x, top, marker='_', ms=14, mew=2, color=colour)
        ax.plot(x, y, 'o', color=colour, ms=7, mec='white', mew=0.8)
        ax.annotate(str(i), (x, y), xytext=(5, -2), textcoords='offset points', fontsize=9, va='top')
    handles = [Line2D([], [], ls='', marker='o', color=c, label=a) for a, c in seen.items()]
    handles += [Line2D([], [], ls='', marker='o', color='0.3', label='worst case (adaptive suite)'),
                Line2D([], [], marker='_', ms=14, mew=2, lw=4, color='0.3', alpha=0.6,
                       label="papers' protocol (end of the bar)"),
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
    return True


def _card_html(folder: Path) -> Markup:
    """The model card (README.md) as HTML, without its YAML metadata (the Hub's model-index); raw HTML in the card
    is escaped, as the Hub renders cards."""
    from huggingface_hub import ModelCard
    from markdown_it import MarkdownIt

    text = ModelCard((folder / hub.CARD_FILE).read_text(encoding='utf-8'), ignore_metadata_errors=True).text
    return Markup(MarkdownIt('commonmark', {'html': False}).enable('table').render(text))


def _model_plots(folder: Path) -> List[Tuple[str, str]]:
    """(src relative to the model page, caption) of each figure beside the model's reports."""
    return [(p.relative_to(folder).as_posix(),
             f'{PLOTS.get(p.name, p.stem)} ({p.parent.relative_to(folder).as_posix()})')
            for run in report_folders(folder) for p in sorted(run.glob('*.png'))]


def check_output(output: Path, overwrite: bool) -> None:
    """Refuse an output the site must not go to: a file, a model's eval/ folder (``lwta-zoo push`` uploads it)
    or a folder with files this command did not write (unless ``overwrite``)."""
    resolved = output.resolve()
    for folder in (resolved, *resolved.parents):
        if folder.name == 'eval' and (folder.parent / hub.CONFIG_FILE).is_file():
            raise ValueError(f'--output {output} is inside the model folder {folder.parent}\'s eval/, which '
                             'lwta-zoo push uploads with the weights; choose a folder outside it')
    if output.exists() and not output.is_dir():
        raise ValueError(f'--output {output} is a file, not a folder')
    if output.is_dir() and any(output.iterdir()) and not (output / MARKER).is_file() and not overwrite:
        raise ValueError(f'--output {output} is not empty and lwta-zoo leaderboard did not write it (no {MARKER}); '
                         'choose an empty or new folder, or pass --overwrite to write over its files')


def _clear_previous(output: Path) -> None:
    """Remove the files a previous write listed in ``MARKER`` (nothing else), and the folders they leave empty."""
    marker = output / MARKER
    if not marker.is_file():
        return
    try:
        written = json.loads(marker.read_text(encoding='utf-8'))['files']
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f'{marker} is not the list of files lwta-zoo leaderboard writes ({e}); remove it, or the '
                         'folder, and rerun') from e
    root = output.resolve()
    for name in written:
        path = (output / name).resolve()
        if root in path.parents and path.is_file():
            path.unlink()
    for folder in sorted((p for p in output.rglob('*') if p.is_dir()), key=lambda p: -len(p.parts)):
        if not any(folder.iterdir()):
            folder.rmdir()


def write_site(output: Path, overwrite: bool = False) -> List[Path]:
    """Write the site into ``output`` (see the module's docstring for which folders it takes); returns the pages,
    the front page first."""
    output = Path(output)
    check_output(output, overwrite)
    names = hub.shipped_weights()
    if not names:
        raise ValueError(f'no shipped models in {hub.SHIPPED_WEIGHTS}: nothing to list')
    all_rows = rows()  # read every report before anything is removed or written
    by_board = boards(all_rows)
    _clear_previous(output)
    output.mkdir(parents=True, exist_ok=True)
    env = _environment()
    context = dict(boards=by_board)
    written: List[Path] = []
    for asset in sorted(STATIC.iterdir()):
        written.append(Path(shutil.copyfile(asset, output / asset.name)))
    plots: Dict[BoardKey, Optional[str]] = {}
    for key, board in by_board.items():
        plot = output / f'{board_id(key)}.svg'
        plots[key] = plot.name if key[1] and plot_board(board, plot) else None
        written += [plot] if plots[key] else []
    table = table4.rows()
    with_table4 = table4.complete(table)  # once the five Table 4 models ship all their reports
    pages = [output / 'index.html']
    pages[0].write_text(env.get_template('index.html').render(**context, plots=plots, title='Leaderboard', root='',
                                                              with_table4=with_table4), encoding='utf-8')
    if with_table4:
        (output / 'table4.json').write_text(table4.to_json(table), encoding='utf-8')
        written.append(output / 'table4.json')
        pages.append(output / 'table4.html')
        pages[-1].write_text(table4_page(table, by_board), encoding='utf-8')
    hub_repo = hub.CODE_REPOSITORY.split('github.com/')[-1]
    for name in names:
        folder = hub.SHIPPED_WEIGHTS / name
        target = output / model_folder(name)
        target.mkdir(parents=True, exist_ok=True)
        for run in report_folders(folder):  # the reports the pages link to, and their plots
            for file in sorted(p for p in run.iterdir() if p.is_file()):
                copy = target / file.relative_to(folder)
                copy.parent.mkdir(parents=True, exist_ok=True)
                written.append(Path(shutil.copyfile(file, copy)))
        page = target / 'index.html'
        page.write_text(env.get_template('model.html').render(
            **context, title=name, root='../../', rows=[r for r in all_rows if r.name == name],
            conversion=hub.conversion(name), install=f'pip install "lwta_zoo @ git+{hub.CODE_REPOSITORY}"',
            mirror_env=hub.MIRROR_ENV, hub_repo=hub_repo, hf_org=HF_ORG, plots=_model_plots(folder),
            card=_card_html(folder)), encoding='utf-8')
        pages.append(page)
    files = sorted({p.relative_to(output).as_posix() for p in written + pages})
    (output / MARKER).write_text(json.dumps({'written_by': f'lwta-zoo leaderboard (lwta_zoo {__version__})',
                                             'files': files}, indent=1), encoding='utf-8')
    return pages

