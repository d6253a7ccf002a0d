"""Carry unfinished work in runs/ (ignored by git) across sessions through runs_in_progress/ (tracked).

A session here ends after 3 hours and the next may start on a fresh machine, so before stopping:

    python tools/runs_in_progress.py save      # then commit runs_in_progress/

copies into runs_in_progress/<same path>: the latest checkpoint, recipe.yaml and metrics.jsonl of
every training run not yet exported; the export/, metrics.jsonl, recipe.yaml and final_metrics.json of
every exported run whose weights are not yet published in lwta_zoo/weights/ (what
tools/make_trained_weights.py reads); the partial/ of every evaluation not yet finished; and every
finished report (report.json, report.md, figures) not yet published beside the weights in
lwta_zoo/weights/. What was saved before is replaced, so the folder holds just what is unfinished.
The next session restores it and resumes each run with ``--resume``:

    python tools/runs_in_progress.py restore
"""
import argparse
import filecmp
import shutil
from pathlib import Path
from typing import List

from lwta_zoo.hub import tensors_sha256

ROOT = Path(__file__).resolve().parents[1]
RUNS, SAVED, PUBLISHED = ROOT / 'runs', ROOT / 'runs_in_progress', ROOT / 'lwta_zoo' / 'weights'
TRAINING_FILES = ('checkpoint.safetensors', 'recipe.yaml', 'metrics.jsonl')
EXPORTED_FILES = ('export', 'recipe.yaml', 'metrics.jsonl', 'final_metrics.json')


def _published(report: Path) -> bool:
    return any(filecmp.cmp(report, p, shallow=False) for p in PUBLISHED.glob(f'*/eval/{report.parent.name}/report.json'))


def _weights_published(export: Path) -> bool:
    """Whether some folder in lwta_zoo/weights/ holds the export's tensors (publishing rewrites the file's
    metadata, so the tensors are compared, not the bytes)."""
    tensors = tensors_sha256(export / 'model.safetensors')
    return any(tensors_sha256(p) == tensors for p in PUBLISHED.glob('*/model.safetensors'))


def unfinished() -> List[Path]:
    """The files and folders under runs/ that another session needs to finish the work."""
    keep: List[Path] = []
    for checkpoint in sorted(RUNS.rglob('checkpoint.safetensors')):
        if not (checkpoint.parent / 'export').is_dir():
            keep += [checkpoint.parent / f for f in TRAINING_FILES if (checkpoint.parent / f).is_file()]
    for export in sorted(RUNS.rglob('export')):
        if (export / 'model.safetensors').is_file() and not _weights_published(export):
            keep += [export.parent / f for f in EXPORTED_FILES if (export.parent / f).exists()]
    for partial in sorted(RUNS.rglob('partial')):
        if partial.is_dir() and not (partial.parent / 'report.json').is_file():
            keep.append(partial)
    for report in sorted(RUNS.rglob('report.json')):
        if not _published(report):
            keep += sorted(p for p in report.parent.iterdir() if p.is_file())
    return keep


def save() -> None:
    if SAVED.exists():
        shutil.rmtree(SAVED)
    for path in unfinished():
        target = SAVED / path.relative_to(RUNS)
        target.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if path.is_dir() else shutil.copy2)(path, target)
        print(f'saved {path.relative_to(ROOT)}')


def restore() -> None:
    for path in sorted(p for p in SAVED.rglob('*') if p.is_file()):
        target = RUNS / path.relative_to(SAVED)
        if target.exists() and target.stat().st_mtime >= path.stat().st_mtime:
            print(f'kept {target.relative_to(ROOT)} (not older than the saved copy)')
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
        print(f'restored {target.relative_to(ROOT)}')


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('action', choices=('save', 'restore'))
    {'save': save, 'restore': restore}[p.parse_args().action]()


if __name__ == '__main__':
    main()
