"""Fast adversarial training: the one-cycle schedule stepped per optimizer step, FGSM with a
random start as a one-step PGD recipe, and the catastrophic-overfitting guard.

Tiny synthetic runs (tests/test_train.py's data and recipe) on one CPU thread.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import List

import pytest
import torch

from lwta_zoo.checkpoint import load_state
from lwta_zoo.recipe import RecipeError, recipe_from_dict
from lwta_zoo.train import Trainer, lr_factor, train
from test_train import N_TRAIN, data_root, read_log, tiny_recipe  # noqa: F401  (data_root is a fixture)

CYCLIC = {'name': 'cyclic', 'peak': 1.0}
FGSM_RS = {'method': 'pgd', 'eps': 0.1, 'steps': 1, 'step_size': 0.125, 'random_start': True}


def test_cyclic_schedule_rises_to_the_peak_then_falls_to_zero(data_root: Path) -> None:
    r = recipe_from_dict(tiny_recipe(data_root, train={'epochs': 4}, schedule={'name': 'cyclic', 'peak': 1.5}))
    assert [lr_factor(e, r) for e in (0, 0.75, 1.5, 2.75, 4)] == pytest.approx([0, 0.5, 1, 0.5, 0])


def test_cyclic_lr_changes_every_step_and_other_schedules_hold_an_epoch(data_root: Path, tmp_path: Path) -> None:
    steps = N_TRAIN // 8
    train(recipe_from_dict(tiny_recipe(data_root, schedule=CYCLIC)), tmp_path / 'cyclic')
    lrs = [r['lr'] for r in read_log(tmp_path / 'cyclic') if 'lr' in r]
    # logged after step s (1-based) is the rate of step s + 1: (s / steps) of the peak, then down
    assert lrs == pytest.approx([0.05 * min(s / steps, 2 - s / steps) for s in range(1, 2 * steps + 1)])
    train(recipe_from_dict(tiny_recipe(data_root, schedule={'name': 'multistep', 'milestones': [1], 'gamma': 0.5})),
          tmp_path / 'multistep')
    lrs = [r['lr'] for r in read_log(tmp_path / 'multistep') if 'lr' in r]
    assert lrs == pytest.approx([0.05] * (steps - 1) + [0.025] * (steps + 1))


def test_bad_cyclic_or_guard_settings_are_refused(data_root: Path) -> None:
    with pytest.raises(RecipeError, match='schedule.peak'):
        recipe_from_dict(tiny_recipe(data_root, schedule={'name': 'cyclic', 'peak': 2}))
    with pytest.raises(RecipeError, match='guard'):
        recipe_from_dict(tiny_recipe(data_root, guard={'enabled': True}))  # no adversary to guard


def test_guard_leaves_training_unchanged_while_pgd_accuracy_holds(data_root: Path, tmp_path: Path) -> None:
    """The guard's attacks draw from a forked RNG: a guarded run trains the same weights."""
    plain = Trainer(recipe_from_dict(tiny_recipe(data_root, adversary=FGSM_RS)), tmp_path / 'plain')
    plain.fit()  # before the next Trainer seeds the global RNG
    guarded = Trainer(recipe_from_dict(tiny_recipe(data_root, adversary=FGSM_RS, guard={'enabled': True, 'drop': 1.0})),
                      tmp_path / 'guarded')
    guarded.fit()
    for (k, a), b in zip(plain.model.state_dict().items(), guarded.model.state_dict().values()):
        assert torch.equal(a, b), k
    accs = [r['guard_pgd_acc'] for r in read_log(tmp_path / 'guarded') if 'guard_pgd_acc' in r]
    assert len(accs) == 2 and all(0 <= a <= 1 for a in accs)
    assert not any('catastrophic_overfitting' in r for r in read_log(tmp_path / 'guarded'))


def test_guard_restores_the_best_epoch_and_stops_on_a_collapse(data_root: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = recipe_from_dict(tiny_recipe(data_root, train={'epochs': 5}, adversary=FGSM_RS,
                                          guard={'enabled': True, 'drop': 0.2}))
    trainer = Trainer(recipe, tmp_path / 'run')
    script: List[float] = [0.4, 0.5, 0.45, 0.1, 0.9]  # epoch 4 collapses (0.1 < 0.5 - 0.2)
    weights = {}

    def fake_accuracy() -> float:
        weights[trainer.epoch] = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        return script[trainer.epoch - 1]

    monkeypatch.setattr(trainer, 'guard_accuracy', fake_accuracy)
    metrics_final = trainer.fit()
    log = read_log(tmp_path / 'run')
    collapse = [r for r in log if r.get('catastrophic_overfitting')]
    assert len(collapse) == 1 and collapse[0]['epoch'] == 4 and collapse[0]['restored_epoch'] == 2
    assert trainer.epoch == 4 and sorted(weights) == [1, 2, 3, 4]  # no fifth epoch
    for k, v in trainer.model.state_dict().items():
        assert torch.equal(v, weights[2][k]), k
    assert 0 <= metrics_final['test_clean_acc'] <= 1
    exported = load_state(tmp_path / 'run' / 'checkpoint.safetensors')
    assert exported['guard_best']['stopped_after_epoch'] == 4
    # a resumed run does not train on past the collapse
    again = Trainer(recipe, tmp_path / 'run', resume=True)
    monkeypatch.setattr(again, 'guard_accuracy', lambda: pytest.fail('trained on after the collapse'))
    again.fit()
    assert again.epoch == 4


def test_resume_may_change_threads_but_not_the_run(data_root: Path, tmp_path: Path) -> None:
    """Long runs move between machines: threads, the arithmetic (bf16, channels_last), the data's
    folder and the description may change, and each (re)start's log record says which arithmetic
    it ran; the rest is the run (and the data's content is checked by the checkpoint's identity)."""
    Trainer(recipe_from_dict(tiny_recipe(data_root, adversary=FGSM_RS, train={'bf16': True})), tmp_path / 'run',
            max_steps=3).fit()
    moved = tmp_path / 'moved'  # the same data in another folder, and a reworded description
    moved.mkdir()
    for f in data_root.iterdir():
        (moved / f.name).write_bytes(f.read_bytes())
    arithmetic = {'threads': 2, 'bf16': False, 'channels_last': True}
    resumed = Trainer(recipe_from_dict({**tiny_recipe(moved, adversary=FGSM_RS, train=arithmetic),
                                        'description': 'reworded'}), tmp_path / 'run', resume=True, max_steps=4)
    assert resumed.step == 3
    resumed.fit()
    torch.set_num_threads(1)  # the suite's setting (conftest)
    starts = [r for r in read_log(tmp_path / 'run') if 'start' in r]
    assert [(r['step'], r['bf16'], r['channels_last']) for r in starts] == [(0, True, False), (3, False, True)]
    with pytest.raises(RecipeError, match='adversary.step_size'):
        Trainer(recipe_from_dict(tiny_recipe(data_root, adversary={**FGSM_RS, 'step_size': 0.1})), tmp_path / 'run',
                resume=True)


def test_bf16_on_a_cpu_without_native_bf16_warns(data_root: Path, tmp_path: Path, monkeypatch) -> None:
    """Emulated bf16 autocast is about 10x slower than float32: the user hears it, with the remedy."""
    import lwta_zoo.train
    monkeypatch.setattr(lwta_zoo.train, 'native_bf16', lambda device: False)
    with pytest.warns(UserWarning, match='train.bf16=false'):
        Trainer(recipe_from_dict(tiny_recipe(data_root, train={'bf16': True})), tmp_path / 'emulated')
    monkeypatch.setattr(lwta_zoo.train, 'native_bf16', lambda device: True)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        Trainer(recipe_from_dict(tiny_recipe(data_root, train={'bf16': True})), tmp_path / 'native')


def test_resume_accepts_a_checkpoint_written_before_a_recipe_key_existed(data_root: Path, tmp_path: Path) -> None:
    """A new schema key takes its default, which is what an older run did, so the run resumes."""
    from lwta_zoo.checkpoint import save_state
    recipe = recipe_from_dict(tiny_recipe(data_root))
    Trainer(recipe, tmp_path / 'run', max_steps=3).fit()
    state = load_state(tmp_path / 'run' / 'checkpoint.safetensors')
    del state['recipe']['guard']  # as written before the guard section existed
    save_state(state, tmp_path / 'run' / 'checkpoint.safetensors')
    assert Trainer(recipe, tmp_path / 'run', resume=True).step == 3
    guarded = recipe_from_dict(tiny_recipe(data_root, adversary=FGSM_RS, guard={'enabled': True}))
    with pytest.raises(RecipeError, match='guard.enabled'):
        Trainer(guarded, tmp_path / 'run', resume=True)


def test_augment_batch_crops_and_flips_each_example() -> None:
    from lwta_zoo.data import augment_batch
    images = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8)
    out = augment_batch(images, torch.Generator().manual_seed(0), padding=2)
    assert out.shape == images.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(images, (2,) * 4)
    flips = 0
    for i in range(64):
        found = [f for dy in range(5) for dx in range(5) for f in (0, 1)
                 if torch.equal(padded[i, :, dy:dy + 8, dx:dx + 8].flip(2) if f else padded[i, :, dy:dy + 8, dx:dx + 8],
                                out[i])]
        assert found, i
        flips += found[0]
    assert 16 < flips < 48  # about half flipped
    assert torch.equal(out, augment_batch(images, torch.Generator().manual_seed(0), padding=2))


def test_on_device_data_trains_and_resumes_mid_epoch_identically(tmp_path: Path) -> None:
    """The training set held as one tensor, batches augmented at once: a run stopped mid-epoch and
    resumed ends with the same weights as one that ran straight through."""
    import numpy as np
    root = tmp_path / 'data'
    root.mkdir()
    g = np.random.default_rng(0)
    for split, n in (('train', 48), ('test', 16)):
        np.savez(root / f'{split}.npz', images=g.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
                 labels=np.arange(n) % 10)
    tree = {'model': {'name': 'smallcnn_mnist_lwta', 'args': {'in_chans': 3, 'hidden': 16}},
            'data': {'name': 'cifar10', 'root': str(root), 'download': False, 'augment': True, 'on_device': True},
            'train': {'epochs': 2, 'batch_size': 8, 'seed': 1, 'threads': 1, 'log_every': 1},
            'optim': {'lr': 0.01}, 'adversary': FGSM_RS, 'eval': {'every': 0, 'limit': 4, 'steps': 1, 'batch_size': 16}}
    straight = Trainer(recipe_from_dict(tree), tmp_path / 'straight')
    straight.fit()
    Trainer(recipe_from_dict(tree), tmp_path / 'pieces', max_steps=8).fit()
    resumed = Trainer(recipe_from_dict(tree), tmp_path / 'pieces', resume=True)
    resumed.fit()
    for (k, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k


def test_n_fgsm_starts_from_twice_the_ball_and_is_not_projected() -> None:
    """N-FGSM's training attack: uniform noise in 2 eps, one step of eps, no projection (up to 3 eps)."""
    from lwta_zoo.attacks.pgd import pgd
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    x, y, eps = torch.rand(256, 1, 8, 8) * 0.5 + 0.25, torch.randint(0, 10, (256,)), 0.05
    free = pgd(model, x, y, eps, eps, 1, init_scale=2, project=False) - x
    assert free.abs().max() <= 3 * eps + 1e-6 and free.abs().max() > 2.5 * eps
    assert (free.abs() > eps + 1e-6).float().mean() > 0.3  # most of the noise lies outside the ball
    projected = pgd(model, x, y, eps, eps, 1, init_scale=2) - x
    assert projected.abs().max() <= eps + 1e-6
