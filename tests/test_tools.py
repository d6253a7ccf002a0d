"""The maintenance tools' own logic: what a trained card says training cost, and what a session
carries over to the next (tools/make_trained_weights.py, tools/runs_in_progress.py)."""
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lwta_zoo.hub import _training

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'tools'))
import make_trained_weights  # noqa: E402
import runs_in_progress  # noqa: E402


def _start(step, processor, threads, bf16):
    return {'step': step, 'start': '2026-12-05T00:00:00Z', 'bf16': bf16,
            'machine': {'processor': processor, 'cpus': 2, 'torch_threads': threads}}


def _step(step, sec, per_epoch=10):
    return {'step': step, 'epoch': step / per_epoch, 'sec_per_step': sec}


def test_training_cost_splits_epochs_at_restarts_and_by_machine():
    """An epoch restarted part-way is costed piece by piece: each piece's steps at the rate its own last
    record gives (the mean resets at a restart), on the machine its restart logged."""
    log = [_start(0, 'A', 1, True), _step(5, 360.0), _step(10, 720.0),   # epoch 1: 10 steps at 720 s
           _step(13, 1080.0),                                            # epoch 2, steps 10-14 at 1080 s
           _start(14, 'B', 2, False), _step(17, 180.0), _step(20, 180.0)]  # then 14-20 on B at 180 s
    cost = make_trained_weights.training_cost(log, steps_trained=20)
    a_hours = (10 * 720 + 4 * 1080) / 3600   # 3.2
    b_hours = 6 * 180 / 3600                 # 0.3
    assert cost['train_step_hours'] == pytest.approx(a_hours + b_hours)
    assert cost['machines'] == [f'A, 2 CPUs, 1 torch thread(s), bf16 autocast ({a_hours:.1f} h)',
                                f'B, 2 CPUs, 2 torch thread(s), float32 ({b_hours:.1f} h)']


def test_training_cost_resumed_behind_the_last_record_counts_each_step_once():
    """A run killed after logging step 13 but checkpointed at step 12 resumes at 12: steps 12-13 are
    trained twice but paid once per piece, the first piece ending where the second begins."""
    log = [_start(0, 'A', 1, True), _step(10, 3600.0), _step(13, 3600.0),
           _start(12, 'A', 1, True), _step(20, 1800.0)]
    cost = make_trained_weights.training_cost(log, steps_trained=20)
    assert cost['train_step_hours'] == pytest.approx(10 + 2 + 8 * 0.5)
    assert cost['machines'] == ['A, 2 CPUs, 1 torch thread(s), bf16 autocast (16.0 h)']


def test_the_card_gives_the_clean_curve_the_run_logged_every_epoch_and_at_its_end():
    log = [_start(0, 'EPYC', 1, False), _step(5, 1.0), {'step': 10, 'epoch': 1, 'test_clean_acc': 0.7125},
           _step(15, 1.0), {'step': 20, 'epoch': 2.0, 'test_clean_acc': 0.8, 'final': True}]
    curve = make_trained_weights.clean_curve(log)
    assert curve == [{'epoch': 1, 'test_clean_acc': 0.7125}, {'epoch': 2.0, 'test_clean_acc': 0.8}]
    card = _training({'train': {'batch_size': 8, 'epochs': 2}}, {'steps_trained': 20, 'clean_accuracy_curve': curve})
    assert card.endswith('after epoch 1: 71.2%, 2: 80.0%.')


def test_training_cost_of_a_log_without_steps_is_empty():
    assert make_trained_weights.training_cost([_start(0, 'A', 1, True)], steps_trained=0) == {}


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """A runs/, runs_in_progress/ and lwta_zoo/weights/ of their own for runs_in_progress."""
    for name, folder in (('ROOT', ''), ('RUNS', 'runs'), ('SAVED', 'runs_in_progress'),
                         ('PUBLISHED', 'lwta_zoo/weights')):
        monkeypatch.setattr(runs_in_progress, name, tmp_path / folder)
    (tmp_path / 'lwta_zoo/weights').mkdir(parents=True)
    return tmp_path


def _write(path: Path, text: str = 'x') -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _weights(path: Path, value: float, note: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({'w': torch.full((3,), value)}, str(path), metadata={'note': note})
    return path


def test_unfinished_keeps_what_another_session_needs_and_nothing_published(repo):
    runs, published = repo / 'runs', repo / 'lwta_zoo/weights'
    training = [_write(runs / 'train' / f) for f in runs_in_progress.TRAINING_FILES]
    # exported and published (the published file's metadata differs; its tensors do not): nothing to carry
    _write(runs / 'done/checkpoint.safetensors')
    _weights(runs / 'done/export/model.safetensors', 1.0, 'exported')
    _weights(published / 'm.done/model.safetensors', 1.0, 'published')
    # exported, not published: the export and what publishing it reads
    _weights(runs / 'exported/export/model.safetensors', 2.0, 'exported')
    for f in ('recipe.yaml', 'metrics.jsonl', 'final_metrics.json'):
        _write(runs / 'exported' / f)
    partial = _write(runs / 'done/eval/running/partial/rank0-of-1.json').parent
    _write(runs / 'done/eval/finished/partial/rank0-of-1.json')   # its report is written: not carried
    report = _write(runs / 'done/eval/finished/report.json', '{"n": 1}')
    figure = _write(runs / 'done/eval/finished/figure.png')
    _write(runs / 'done/eval/shipped/report.json', '{"n": 2}')
    _write(published / 'm.done/eval/shipped/report.json', '{"n": 2}')

    kept = runs_in_progress.unfinished()
    assert kept == [*training, runs / 'exported/export', runs / 'exported/recipe.yaml',
                    runs / 'exported/metrics.jsonl', runs / 'exported/final_metrics.json', partial,
                    figure, report]


def test_save_replaces_the_last_save_and_restore_never_overwrites_newer_work(repo):
    runs, saved = repo / 'runs', repo / 'runs_in_progress'
    checkpoint = _write(runs / 'train/checkpoint.safetensors', 'step 10')
    _write(saved / 'old/checkpoint.safetensors', 'a run exported since')
    runs_in_progress.save()
    assert sorted(p.relative_to(saved) for p in saved.rglob('*') if p.is_file()) == \
        [Path('train/checkpoint.safetensors')]

    checkpoint.unlink()   # a fresh machine: restored from the saved copy
    runs_in_progress.restore()
    assert checkpoint.read_text() == 'step 10'

    checkpoint.write_text('step 20')   # trained further since: the saved copy is older and is not restored
    runs_in_progress.restore()
    assert checkpoint.read_text() == 'step 20'
