"""The leaderboard: the shipped models' evaluation reports as ranked rows, and the static site built from them.

A row is a model on one board (dataset and threat model) under one prediction setting (L, the samples a
prediction averages, and how it samples at test time); its figures come from the model's committed reports
(lwta_zoo/weights/<model>/eval/<run>/report.json). The worst case is a report's per-example worst case, and only a
report that ran every attack of the adaptive preset gives one: a row evaluated by the papers' attacks alone is "not
evaluated adaptively" and ranks below every evaluated row. Beside the figures: the papers' protocol, AutoAttack,
clean, each attack, n, R, L, and the model's epochs, training hours, parameters, U and training attack; where a
paper reports the model's configuration, its claim, labelled as the paper's. MODEL_CARDS.md
(tools/make_model_cards.py) lists the same rows.

``lwta-zoo leaderboard --output DIR`` writes the site: a front page with each board's sortable table and its plot
of clean against worst-case accuracy, and a page per model (its rows, download snippets, its reports' plots and
its card). Plain HTML and CSS and a small script: it opens from the file system, loads nothing from the network,
and any static host serves it. DIR must be new, empty, or a folder this command wrote (it replaces the files it
wrote there); --overwrite writes into any other folder. A model's eval/ folder is refused: push uploads it.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from .rows import (
    PAPER_CLAIMS, STATUSES, Evaluation, Figure, Model, PaperClaim, Row, adaptive_attacks, boards, budget, model_rows,
    report_folders, rows,
)
from .site import MARKER, board_id, write_site

__all__ = ['MARKER', 'PAPER_CLAIMS', 'STATUSES', 'Evaluation', 'Figure', 'Model', 'PaperClaim', 'Row',
           'adaptive_attacks', 'board_id', 'boards', 'budget', 'model_rows', 'report_folders', 'rows', 'write_site']


def configure_leaderboard(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``lwta-zoo leaderboard``."""
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument('--output', required=True, help='folder for the site (index.html and the pages it links): '
                        'new, empty, or one this command wrote')
    parser.add_argument('--overwrite', action='store_true',
                        help='write into a non-empty folder this command did not write (same-named files are replaced)')
    parser.set_defaults(func=run_leaderboard)


def run_leaderboard(args: argparse.Namespace) -> int:
    pages = write_site(Path(args.output), overwrite=args.overwrite)
    print(f'wrote {pages[0]} and {len(pages) - 1} pages it links')
    return 0
