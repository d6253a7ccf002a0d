"""One prepared command for a short GPU lease: validate CUDA, time it, train and evaluate the headline model.

    python -m benchmarks.gpu_check pack --data ../shared/data --output .gpu_data   # here, once
    python -m benchmarks.gpu_check run OUT --data .gpu_data [--budget-s 510]        # on the GPU machine
    python -m benchmarks.gpu_check run OUT --smoke                                  # on a CPU: toy sizes

``run`` does, in order, each stage inside its share of a wall-clock budget (a stage that
fails is recorded and the next one runs):

1. ``kernels``: the Triton-kernel tests (tests/test_lwta_triton.py, test_lwta_fast.py) on real
   CUDA tensors: samples, winners, gradients and KL against the C kernels, float32/16/bf16;
2. ``benchmarks``: ``benchmarks.run`` on CUDA at batch 128 and 512 (LWTA/ReLU for WRN-34-1 and
   WRN-34-10, train step and eval forward; L=1/5/20; batched EoT vs the loop);
3. ``max_batch``: L=20 prediction and an EoT-20 gradient of WRN-34-10 folded into forwards of
   128 .. 2048 rows, to set ``lwta_zoo.sampling.MAX_BATCH['cuda']`` from a measurement;
4. ``train``: seconds a step of the WRN paper's 100-epoch PGD-10 recipe (measured, then
   extrapolated), then ``recipes/cifar10_wrn34_10_lwta_gpu_fast.yaml`` (FGSM-RS, bf16,
   channels_last, the training set as one uint8 tensor on the GPU) for as many epochs as fit;
5. ``eval``: ``lwta-zoo eval`` on 500 test images of what it trained.

Everything lands under OUT: ``summary.json`` (every figure, with the machine), ``log.txt`` and
``results.tar.gz`` (test XML, benchmark output, the run's metrics, card, config and eval
report). The weights stay on the machine: a WRN-34-10 is larger than what a lease returns.

The lease carries at most 64 MiB, so ``pack`` stores a class-balanced part of the CIFAR-10
training set (``--train-images``; benchmarks/prepare_gpu_lease.sh packs 20,000) as horizontal byte differences, deflated
(about 0.75 of the raw size), and the 1,000 shared test images; ``run`` unpacks them.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / 'recipes' / 'cifar10_wrn34_10_lwta_gpu_fast.yaml'
PAPER_RECIPE = ROOT / 'recipes' / 'cifar10_wrn34_10_lwta_pgd.yaml'
EVAL_ATTACKS = ('pgd20,pgd_mean,apgd_mean,pgd_ste', 'eot_pgd')  # the second only if time is left
STAGE_SHARE = {'kernels': 120, 'benchmarks': 150, 'eval': 120}  # seconds at most (GPU); training gets the rest
MIN_TRAIN_S = 60


# ----------------------------------------------------------------------------- data

def pack(data: Path, output: Path, train_images: int) -> None:
    """A class-balanced ``train_images`` of cifar10_train.npz and all of cifar10_test_1k.npz, delta-deflated."""
    output.mkdir(parents=True, exist_ok=True)
    with np.load(data / 'cifar10_train.npz') as f:
        images, labels = f['images'], f['labels']
    per_class = train_images // 10
    keep = np.sort(np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(10)]))
    with np.load(data / 'cifar10_test_1k.npz') as f:
        test_images, test_labels = f['images'], f['labels']
    for name, x, y in (('train', images[keep], labels[keep]), ('test', test_images, test_labels)):
        np.savez_compressed(output / f'cifar10_{name}_delta.npz', delta=_delta(x), labels=y)
    size = sum(p.stat().st_size for p in output.glob('*.npz'))
    print(f'{output}: {len(keep)} training and {len(test_labels)} test images, {size / 2 ** 20:.1f} MiB')


def _delta(images: np.ndarray) -> np.ndarray:
    """Differences along each image row, modulo 256 (uint8 NHWC); ``_undelta`` inverts it."""
    out = images.copy()
    out[:, :, 1:] = images[:, :, 1:] - images[:, :, :-1]
    return out


def _undelta(delta: np.ndarray) -> np.ndarray:
    return np.cumsum(delta, axis=2, dtype=np.uint8)


def unpack(packed: Path, folder: Path) -> None:
    """The packed sets as the loader's ``cifar10_{split}.npz`` files in ``folder``."""
    for split in ('train', 'test'):
        with np.load(packed / f'cifar10_{split}_delta.npz') as f:
            np.savez(folder / f'cifar10_{split}.npz', images=_undelta(f['delta']), labels=f['labels'])


def synthetic(folder: Path, n_train: int = 64, n_test: int = 32) -> None:
    """Random CIFAR-shaped images for ``--smoke``."""
    g = np.random.default_rng(0)
    for split, n in (('train', n_train), ('test', n_test)):
        np.savez(folder / f'cifar10_{split}.npz', images=g.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
                 labels=np.arange(n) % 10)


# ----------------------------------------------------------------------------- stages

class Check:
    """The stages' shared state: budget, output folder, summary and log."""

    def __init__(self, out: Path, budget_s: float, smoke: bool):
        self.out, self.smoke, self.start, self.budget = out, smoke, time.time(), budget_s
        self.work = out / 'results'
        self.work.mkdir(parents=True, exist_ok=True)
        self.summary: Dict[str, Any] = {'smoke': smoke, 'budget_s': budget_s, 'stages': {}}
        self.log = open(out / 'log.txt', 'a')

    def left(self) -> float:
        return self.budget - (time.time() - self.start)

    def say(self, text: str) -> None:
        line = f'[{time.time() - self.start:6.1f}s] {text}'
        print(line, flush=True)
        self.log.write(line + '\n')
        self.log.flush()

    def stage(self, name: str, fn: Callable[[], Dict[str, Any]]) -> None:
        """Run one stage, recording its result (or its error) and its time."""
        t0 = time.time()
        self.say(f'{name}: start ({self.left():.0f} s left)')
        try:
            result = fn()
            status = 'ok'
        except Exception as e:  # one stage's failure must not cost the lease's other results
            result, status = {'error': f'{type(e).__name__}: {e}'}, 'failed'
        result.update(status=status, seconds=round(time.time() - t0, 1))
        self.summary['stages'][name] = result
        self.say(f'{name}: {status} in {result["seconds"]} s')
        self.write()

    def command(self, args: List[str], log_name: str, timeout: float) -> int:
        """Run a subprocess from the repo root, its output to results/<log_name>; returns the exit code."""
        with open(self.work / log_name, 'w') as f:
            try:
                env = {**os.environ, 'PYTHONUNBUFFERED': '1', **({'OMP_NUM_THREADS': '1'} if self.smoke else {})}
                return subprocess.run(args, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, timeout=max(timeout, 5),
                                      env=env).returncode
            except subprocess.TimeoutExpired:
                f.write(f'\n[gpu_check: stopped after {timeout:.0f} s]\n')
                return 124

    def write(self) -> None:
        self.summary['elapsed_s'] = round(time.time() - self.start, 1)
        (self.out / 'summary.json').write_text(json.dumps(self.summary, indent=1))

    def close(self) -> None:
        self.write()
        with tarfile.open(self.out / 'results.tar.gz', 'w:gz') as tar:  # weights stay: too large to return
            tar.add(self.work, arcname='results',
                    filter=lambda info: None if info.name.endswith('.safetensors') else info)
        self.log.close()


def environment() -> Dict[str, Any]:
    """lwta_zoo's record of versions and machine, with the Triton version where a GPU is there."""
    import torch

    from lwta_zoo.machine import environment as recorded
    info = recorded()
    if torch.cuda.is_available():
        try:
            import triton
            info['versions']['triton'] = triton.__version__
        except ImportError:
            info['versions']['triton'] = None
    return info


def kernel_tests(check: Check) -> Dict[str, Any]:
    """The kernel test files under pytest; on a GPU machine their Triton side runs on CUDA tensors."""
    files = ['tests/test_lwta_triton.py', 'tests/test_lwta_fast.py']
    if check.smoke:  # the suite runs them (Triton under its interpreter): here only that the command works
        files = ['--collect-only', *files]
    code = check.command([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', *files,
                          f'--junitxml={check.work / "kernel_tests.xml"}'], 'kernel_tests.txt',
                         min(STAGE_SHARE['kernels'], check.left() - 60))
    tail = (check.work / 'kernel_tests.txt').read_text().strip().splitlines()[-1:]
    if code:
        raise RuntimeError(f'pytest exit {code}: {tail}')
    return {'pytest': tail[0] if tail else ''}


def benchmarks(check: Check) -> Dict[str, Any]:
    """``benchmarks.run`` at batch 128 and 512 (``--quick`` in smoke mode); the output files go back."""
    runs = [['--quick', '--sections', '1']] if check.smoke else [
        ['--batch', '128', '--sections', '2,3,4'], ['--batch', '512', '--sections', '2']]
    codes = {}
    for i, extra in enumerate(runs):
        share = (STAGE_SHARE['benchmarks'] if not check.smoke else 60) / len(runs)
        codes[' '.join(extra)] = check.command([sys.executable, '-m', 'benchmarks.run', *extra],
                                               f'benchmark_{i}.txt', min(share, check.left() - 60))
    return {'exit_codes': codes}


def max_batch(check: Check) -> Dict[str, Any]:
    """Seconds for L=20 prediction and an EoT-20 input gradient of WRN-34-10 (smoke: WRN-10-1, 4 samples)
    folded into forwards of at most 128 .. 2048 rows."""
    import torch
    import torch.nn.functional as F

    import lwta_zoo
    from lwta_zoo.attacks.pgd import input_gradient

    cuda = torch.cuda.is_available()
    device = torch.device('cuda' if cuda else 'cpu')
    depth, widen, batch, samples, caps = (10, 1, 2, 4, (4, 8)) if check.smoke else (
        34, 10, 32, 20, (128, 256, 512, 1024, 2048))
    model = lwta_zoo.WideResNet(depth=depth, widen_factor=widen, act='lwta').to(device).eval()
    x = torch.rand(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    result: Dict[str, Any] = {'model': f'WRN-{depth}-{widen} LWTA', 'batch': batch, 'samples': samples,
                              'device': str(device), 'timings_s': {}}

    def timed(fn: Callable[[], object]) -> float:
        fn()
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(3):
            fn()
        if cuda:
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) / 3

    for cap in caps:
        lwta_zoo.set_samples(model, samples, max_batch=cap)
        with torch.no_grad():
            predict = timed(lambda: model(x))
        grad = timed(lambda: input_gradient(model, x, y, F.cross_entropy, samples, cap))
        result['timings_s'][str(cap)] = {'predict': round(predict, 5), 'eot_gradient': round(grad, 5)}
    best = min(result['timings_s'], key=lambda c: result['timings_s'][c]['eot_gradient'])
    result['fastest_for_eot_gradient'] = int(best)
    return result


def train_and_eval(check: Check, data_root: Path) -> None:
    """Stages 4 and 5: probe the step times, train for the epochs that fit, then evaluate."""
    import torch

    import lwta_zoo  # noqa: F401  (registers the models)
    from lwta_zoo.recipe import load_recipe
    from lwta_zoo.train import Trainer

    size = ['model.name=smallcnn_mnist_lwta', 'model.args={in_chans: 3, hidden: 16}', 'eval.limit=8',
            'eval.steps=2', 'guard.examples=16', 'guard.steps=2', 'train.batch_size=16', 'train.threads=1'
            ] if check.smoke else []
    common = [f'data.root={data_root}', 'data.download=false', *size]

    def seconds_per_step(recipe_path: Path, extra: List[str], steps: int, name: str) -> Tuple[float, int]:
        """Median seconds of ``steps`` training steps (after two warm-up steps), and steps per epoch."""
        trainer = Trainer(load_recipe(recipe_path, [*common, *extra]), check.work / name, max_steps=steps + 2)
        times: List[float] = []
        batches = trainer._batches()
        trainer.ddp.train()
        for x, y in batches:  # two warm-up steps, then ``steps`` timed ones
            x, y = trainer._to_device(x, y)
            t0 = time.perf_counter()
            loss, _, _ = trainer.training_loss(x, y)
            trainer.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            trainer.optimizer.step()
            if trainer.device.type == 'cuda':
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
            if len(times) == steps + 2:
                break
        return float(np.median(times[2:])), trainer.steps_per_epoch

    def probe() -> Dict[str, Any]:
        paper_s, paper_steps = seconds_per_step(PAPER_RECIPE, ['eval.every=0'], 3 if check.smoke else 8, 'probe_paper')
        fast_s, fast_steps = seconds_per_step(RECIPE, [], 3 if check.smoke else 10, 'probe_fast')
        r = load_recipe(RECIPE, common)
        full_epoch_steps = 50_000 // load_recipe(PAPER_RECIPE, common).train.batch_size
        return {'paper_recipe_sec_per_step': paper_s, 'fast_recipe_sec_per_step': fast_s,
                'fast_recipe_images_per_s': r.train.batch_size / fast_s,
                'paper_recipe_100_epochs_hours_extrapolated': paper_s * full_epoch_steps * 100 / 3600,
                'fast_steps_per_epoch_here': fast_steps, 'note': 'medians of timed steps after two warm-up steps'}

    check.stage('probe', probe)
    timing = check.summary['stages']['probe']
    if timing['status'] != 'ok':
        return
    train_s = check.left() - STAGE_SHARE['eval'] - 30
    epoch_s = timing['fast_recipe_sec_per_step'] * timing['fast_steps_per_epoch_here'] * 1.1  # guard, eval
    epochs = 1 if check.smoke else max(1, int(train_s // epoch_s))
    if not check.smoke and train_s < MIN_TRAIN_S:
        check.summary['stages']['train'] = {'status': 'skipped', 'reason': f'{train_s:.0f} s left for training'}
        return

    run = check.work / 'run'

    def train() -> Dict[str, Any]:
        overrides = [*common, f'train.epochs={epochs}', f'schedule.peak={0.4 * epochs}']
        recipe = load_recipe(RECIPE, overrides)
        metrics = Trainer(recipe, run).fit()
        weights = run / 'export' / 'model.safetensors'
        return {'epochs': epochs, 'overrides': overrides, 'metrics': metrics,
                'weights_sha256': hashlib.sha256(weights.read_bytes()).hexdigest()}

    check.stage('train', train)
    if check.summary['stages']['train']['status'] != 'ok':
        return

    def evaluate() -> Dict[str, Any]:
        n = '16' if check.smoke else '500'
        out = {}
        for i, attacks in enumerate(EVAL_ATTACKS):
            if i and check.left() < 60:
                out[attacks] = 'skipped: no time left'
                continue
            folder = check.work / f'eval_{i}'
            code = check.command([sys.executable, '-m', 'lwta_zoo.cli', 'eval', str(run / 'export'),
                                  '--data', str(data_root / 'cifar10_test.npz'), '--dataset', 'cifar10', '--n', n,
                                  '--attacks', attacks, '--output', str(folder), '--no-progress', '--no-figures',
                                  *(['--adaptive-steps', '2', '--eot-samples', '2'] if check.smoke else [])],
                                 f'eval_{i}.txt', check.left() - 15)
            report = folder / 'report.json'
            out[attacks] = json.loads(report.read_text()) if code == 0 and report.is_file() else f'exit {code}'
        return {'reports': out}

    check.stage('eval', evaluate)


def run(out: Path, data: Optional[Path], budget_s: float, smoke: bool) -> Dict[str, Any]:
    """All stages into ``out`` (see the module docstring); returns the summary."""
    if smoke:  # toy sizes on a CPU that may be shared: one thread (subprocesses too, see Check.command)
        import torch
        torch.set_num_threads(1)
    check = Check(out, budget_s, smoke)
    check.summary['environment'] = environment()
    with tempfile.TemporaryDirectory() as tmp:
        data_root = Path(tmp)
        if smoke:
            synthetic(data_root)
        else:
            unpack(data, data_root)
        check.stage('kernels', lambda: kernel_tests(check))
        check.stage('benchmarks', lambda: benchmarks(check))
        check.stage('max_batch', lambda: max_batch(check))
        train_and_eval(check, data_root)
    check.close()
    return check.summary


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest='command', required=True)
    p = sub.add_parser('pack', help='here: the data the lease carries')
    p.add_argument('--data', type=Path, required=True, help='folder with cifar10_train.npz, cifar10_test_1k.npz')
    p.add_argument('--output', type=Path, default=ROOT / '.gpu_data')
    p.add_argument('--train-images', type=int, default=20_000)
    r = sub.add_parser('run', help='there: every stage, into OUT')
    r.add_argument('out', type=Path)
    r.add_argument('--data', type=Path, default=ROOT / '.gpu_data', help="the folder 'pack' wrote")
    r.add_argument('--budget-s', type=float, default=510, help='wall-clock seconds for everything')
    r.add_argument('--smoke', action='store_true', help='toy sizes on any device (the test suite runs this)')
    args = parser.parse_args(argv)
    if args.command == 'pack':
        pack(args.data, args.output, args.train_images)
        return 0
    summary = run(args.out, args.data, args.budget_s, args.smoke)
    failed = [k for k, v in summary['stages'].items() if v['status'] == 'failed']
    print(json.dumps({k: v['status'] for k, v in summary['stages'].items()}))
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
