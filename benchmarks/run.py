"""LWTA performance benchmarks: ``python -m benchmarks.run [--quick] [--repeats R] [--batch B] [--sections 2,3]``.

Prints, measured side by side in one run (CPU, and CUDA when available):

1. one LWTA call on a WRN-16-4-sized activation: ReLU, ours (fused; in place as ``relu_``),
   ours (eager), reference;
2. WRN-16-4 and WRN-34-1 (WRN-34-10 on CUDA) at batch B: train step (forward, ELBO
   backward, SGD step) and eval forward, LWTA (ours / reference) over ReLU; saved-for-backward
   memory over ReLU (CPU; peak allocated memory on CUDA);
3. L-sample prediction (WRN-34-1): L = 1, 5, 20 folded into the batch (L=20 in one forward
   and in forwards of the default ``max_batch`` rows) vs L single forwards;
4. EoT-20 input gradient (WRN-34-1): batched vs a loop of 20 single-sample gradients;
5. APGD-CE with EoT-20 (pyautoattack's APGDAttack): its own eot_iter loop vs one batched
   forward per step (``benchmarks.eot.EoTCrossEntropy``), same attack otherwise, at batch 4
   and the small batch;
6. WRN-16-4 with U=4 LWTA at batch B: train step and eval forward, fused kernels (C on CPU,
   Triton on CUDA) vs the eager path on the same model;
7. WRN-34-1 at batch B, ReLU and LWTA, as ``train.bf16`` / ``train.channels_last`` run them:
   images/s of a training step in fp32, channels_last, bf16 autocast and both, each over its
   activation's fp32 step and LWTA over ReLU; the eval forward (fp32 and bf16 + channels_last),
   LWTA over ReLU;
8. issue 30's table (CPU): every row of it, LWTA over ReLU eager and over ReLU compiled by
   ``torch.compile`` where that works here (``--no-compile``: without), and the memory saved for
   backward.

Timings are interleaved (each repeat runs every variant once, in turn) and reported as
medians, with the load average, because the machine may be shared. The issue's targets
(issue 7) are printed beside the ratios.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from typing import Callable, Dict, List

import torch
import torch.nn as nn
import torch.nn.functional as F

import lwta_zoo
from lwta_zoo import MultiSample, kl_divergence, lwta
from lwta_zoo.attacks.pgd import input_gradient
from lwta_zoo.kernels import cpu_library, triton_kernels
from lwta_zoo.layers import lwta_fast

from .eot import EoTCrossEntropy
from .reference import ReferenceLWTA, to_reference

N_TRAIN = 50_000  # CIFAR-10: the ELBO's KL weight is 1 / N_TRAIN


def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize()


def timed(fns: Dict[str, Callable[[], object]], repeats: int, device: torch.device) -> Dict[str, float]:
    """Median seconds per call of each function, after one warm-up call, interleaved."""
    times: Dict[str, List[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def report(title: str, medians: Dict[str, float], base: str, targets: Dict[str, str] | None = None) -> None:
    """Print medians and their ratios to ``base``."""
    print(f'\n{title}  [load avg {os.getloadavg()[0]:.1f}]')
    for name, t in medians.items():
        target = f'   target {targets[name]}' if targets and name in targets else ''
        print(f'  {name:<34} {t:9.4f} s   x{t / medians[base]:6.2f} vs {base}{target}')


def layer_benchmark(args, device: torch.device) -> None:
    x = torch.randn(args.batch, 64, 32, 32, device=device)
    xg, x_mut = x.clone().requires_grad_(True), x.clone()  # x_mut: for the in-place calls (cost is value-blind)
    ref_eval, ref_train = ReferenceLWTA().eval(), ReferenceLWTA().train()

    def train(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], object]:
        return lambda: fn(xg).sum().backward()

    fns = {
        'relu_ eval': lambda: torch.relu_(x_mut),
        'ours eval, in place': lambda: lwta(x_mut, inplace=True),
        'ours eval': lambda: lwta(x),
        'reference eval': lambda: ref_eval(x),
        'relu train fwd+bwd': train(torch.relu),
        'ours train fwd+bwd (+KL)': train(lambda v: (lambda y, kl: y.sum() + kl)(*lwta_fast.relaxed(v, 0.67, True))
                                          if lwta_fast.supports(v) else lwta(v, training=True)),
        'reference train fwd+bwd (+KL)': train(lambda v: ref_train(v).sum() + ref_train.kl),
    }
    medians = timed(fns, args.repeats * 3, device)
    with lwta_fast.eager():
        eager = timed({'ours eager eval': lambda: lwta(x),
                       'ours eager train fwd+bwd': train(lambda v: lwta(v, training=True))}, args.repeats * 3, device)
    report(f'1. one activation call, input {tuple(x.shape)}', {**medians, **eager}, 'relu_ eval')
    print(f'  ours vs reference: eval x{medians["reference eval"] / medians["ours eval"]:.2f} faster (target >= 3), '
          f'train x{medians["reference train fwd+bwd (+KL)"] / medians["ours train fwd+bwd (+KL)"]:.2f} faster '
          f'(target >= 2)')


def saved_bytes(step: Callable[[], torch.Tensor]) -> int:
    """Bytes of the distinct storages autograd saves for backward in ``step`` (activations)."""
    storages: Dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return sum(storages.values())


def elbo_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Training-mode cross-entropy plus the KL terms over N_TRAIN (none for ReLU)."""
    out = F.cross_entropy(model.train()(x), y)
    return out + kl_divergence(model) / N_TRAIN


def train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], object]:
    """One SGD step on the ELBO (forward, backward, update)."""
    optim = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step() -> None:
        optim.zero_grad(set_to_none=True)
        elbo_loss(model, x, y).backward()
        optim.step()
    return step


def eval_forward(model: nn.Module, x: torch.Tensor) -> Callable[[], object]:
    def forward() -> torch.Tensor:
        with torch.no_grad():
            return model.eval()(x)
    return forward


def on_eager_path(fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` with LWTA on the eager path, so that fused and eager calls can be interleaved."""
    def run() -> object:
        with lwta_fast.eager():
            return fn()
    return run


def wrn_benchmark(args, device: torch.device, depth: int, widen: int) -> None:
    torch.manual_seed(0)
    x = torch.rand(args.batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    models = {'relu': lwta_zoo.WideResNet(depth=depth, widen_factor=widen, act='relu'),
              'lwta': lwta_zoo.WideResNet(depth=depth, widen_factor=widen, act='lwta')}
    models['reference'] = to_reference(lwta_zoo.WideResNet(depth=depth, widen_factor=widen, act='lwta'))
    for m in models.values():
        m.to(device)

    train = timed({f'{n} train step': train_step(m, x, y) for n, m in models.items()}, args.repeats, device)
    # an eval forward costs a fraction of a step: five times the repeats, for a steadier median
    evals = timed({f'{n} eval forward': eval_forward(m, x) for n, m in models.items()}, args.repeats * 5, device)
    title = f'2. WRN-{depth}-{widen}, batch {args.batch}'
    report(title + ': training step', train, 'relu train step',
           {'lwta train step': '<= 1.2x relu'})
    report(title + ': eval forward', evals, 'relu eval forward', {'lwta eval forward': '<= 1.1x relu'})
    print(f'  ours vs reference, whole model (convolutions included; the targets >= 2 / >= 3 are for the '
          f'activation, section 1): train x{train["reference train step"] / train["lwta train step"]:.2f}, '
          f'eval x{evals["reference eval forward"] / evals["lwta eval forward"]:.2f} faster')
    memory = {}
    for name in models:
        if device.type == 'cuda':
            torch.cuda.reset_peak_memory_stats()
            elbo_loss(models[name], x, y).backward()
            memory[name] = torch.cuda.max_memory_allocated()
        else:
            memory[name] = saved_bytes(lambda: elbo_loss(models[name], x, y))
    what = 'peak allocated memory' if device.type == 'cuda' else 'memory saved for backward'
    print(f'  {what}: ' + ', '.join(f'{n} {b / 2 ** 20:.0f} MiB (x{b / memory["relu"]:.2f})'
                                     for n, b in memory.items()))


def general_u_benchmark(args, device: torch.device, U: int = 4) -> None:
    """WRN-16-4 with U-unit LWTA: the fused kernels against the eager path, same model and inputs."""
    torch.manual_seed(0)
    x = torch.rand(args.batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    model = lwta_zoo.WideResNet(depth=16, widen_factor=4, act='lwta', lwta_args={'U': U}).to(device)
    step, forward = train_step(model, x, y), eval_forward(model, x)
    medians = timed({'fused train step': step, 'eager train step': on_eager_path(step),
                     'fused eval forward': forward, 'eager eval forward': on_eager_path(forward)},
                    args.repeats, device)
    print(f'\n6. WRN-16-4, U={U} LWTA, batch {args.batch}: fused kernels vs the eager path  '
          f'[load avg {os.getloadavg()[0]:.1f}]')
    for what in ('train step', 'eval forward'):
        fused, eager = medians[f'fused {what}'], medians[f'eager {what}']
        print(f'  {what:<13} fused {fused:9.4f} s   eager {eager:9.4f} s   fused x{eager / fused:5.2f} faster')


PRECISIONS = {'fp32': (False, False), 'channels_last': (False, True), 'bf16': (True, False),
              'bf16 + channels_last': (True, True)}  # name: (bf16 autocast, channels_last)


def precision_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, bf16: bool) -> Callable[[], object]:
    """One SGD step as the trainer takes it: the forward under bf16 autocast if asked, the ELBO in float32."""
    optim = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step() -> None:
        optim.zero_grad(set_to_none=True)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model.train()(x)
        (F.cross_entropy(logits.float(), y) + kl_divergence(model).float() / N_TRAIN).backward()
        optim.step()
    return step


def precision_forward(model: nn.Module, x: torch.Tensor, bf16: bool) -> Callable[[], object]:
    def forward() -> torch.Tensor:
        with torch.no_grad(), torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            return model.eval()(x)
    return forward


def precision_benchmark(args, device: torch.device) -> None:
    """WRN-34-1, ReLU and LWTA, in fp32, channels_last, bf16 autocast and bf16 + channels_last."""
    x = torch.rand(args.batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    steps, forwards = {}, {}
    for act in ('relu', 'lwta'):
        for name, (bf16, channels_last) in PRECISIONS.items():
            fmt = torch.channels_last if channels_last else torch.contiguous_format
            torch.manual_seed(0)
            model = lwta_zoo.WideResNet(depth=34, widen_factor=1, act=act).to(device, memory_format=fmt)
            xf = x.contiguous(memory_format=fmt)
            steps[act, name] = precision_step(model, xf, y, bf16)
            if name in ('fp32', 'bf16 + channels_last'):
                forwards[act, name] = precision_forward(model, xf, bf16)
    train = timed(steps, args.repeats, device)
    evals = timed(forwards, args.repeats * 5, device)
    print(f'\n7. WRN-34-1, batch {args.batch}, {torch.get_num_threads()} threads: training step by precision and '
          f'layout  [load avg {os.getloadavg()[0]:.1f}]')
    print(f'  {"":<22}{"relu img/s":>11}{"vs fp32":>9}{"lwta img/s":>12}{"vs fp32":>9}{"lwta/relu":>11}')
    for name in PRECISIONS:
        relu, lwta_ = train['relu', name], train['lwta', name]
        print(f'  {name:<22}{args.batch / relu:11.1f}{train["relu", "fp32"] / relu:8.2f}x'
              f'{args.batch / lwta_:12.1f}{train["lwta", "fp32"] / lwta_:8.2f}x{lwta_ / relu:10.2f}x')
    for name in ('fp32', 'bf16 + channels_last'):
        relu, lwta_ = evals['relu', name], evals['lwta', name]
        target = '   target <= 1.1x relu' if name == 'fp32' else ''
        print(f'  eval forward, {name:<22} relu {relu:.4f} s   lwta {lwta_:.4f} s   lwta/relu x{lwta_ / relu:.2f}{target}')


ISSUE30_ROWS = [  # (label, depth, widen, precision, what, target for LWTA over eager ReLU)
    ('training step, float32', 34, 1, 'fp32', 'step', 1.10),
    ('training step, bf16 autocast + channels_last', 34, 1, 'bf16 + channels_last', 'step', 1.15),
    ('eval forward, float32', 34, 1, 'fp32', 'eval', 1.05),
    ('eval forward, bf16 + channels_last', 34, 1, 'bf16 + channels_last', 'eval', 1.10),
    ('WRN-16-4 training step, float32', 16, 4, 'fp32', 'step', 1.05),
    ('WRN-16-4 eval forward, float32', 16, 4, 'fp32', 'eval', 1.02),
]


def compiled(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> nn.Module | str:
    """``torch.compile(model)``, compiled here for an eval forward and a training step on (x, y), or the
    reason it does not compile or run (one line)."""
    try:
        net = torch.compile(model)
        precision_forward(net, x, False)()
        precision_step(net, x, y, False)()
        return net
    except Exception as e:  # no C++ compiler, an unsupported CPU, ...: ReLU eager is then the only peer
        return f'{type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else ""}'


def issue30_benchmark(args, device: torch.device) -> None:
    """Issue 30's table: WRN-34-1 (and WRN-16-4) at batch B, LWTA (the zoo's model: BatchNorm fused into
    the LWTA kernels) over ReLU eager, and over ReLU compiled by torch.compile where that works; the
    memory autograd saves for backward, LWTA over ReLU."""
    x = torch.rand(args.batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    medians, notes = {}, []
    for depth, widen in ((34, 1), (16, 4)):
        precisions = {p for _, d, _, p, _, _ in ISSUE30_ROWS if d == depth}
        for precision in sorted(precisions):
            bf16, channels_last = PRECISIONS[precision]
            fmt = torch.channels_last if channels_last else torch.contiguous_format
            fns = {}
            for act in ('relu', 'lwta', 'relu compiled'):
                torch.manual_seed(0)
                model = lwta_zoo.WideResNet(depth=depth, widen_factor=widen, act=act.split()[0])
                model = model.to(device, memory_format=fmt)
                if act == 'relu compiled' and args.compile and (depth, precision) == (34, 'fp32'):
                    model = compiled(model, x, y)
                    if isinstance(model, str):
                        notes.append(f'torch.compile, WRN-{depth}-{widen} {precision}: not used ({model})')
                        continue
                elif act == 'relu compiled':
                    continue
                xf = x.contiguous(memory_format=fmt)
                fns[act, 'step'] = precision_step(model, xf, y, bf16)
                fns[act, 'eval'] = precision_forward(model, xf, bf16)
            steps = timed({k: v for k, v in fns.items() if k[1] == 'step'}, args.repeats, device)
            evals = timed({k: v for k, v in fns.items() if k[1] == 'eval'}, args.repeats * 3, device)
            for (act, what), t in {**steps, **evals}.items():
                medians[depth, precision, what, act] = t
    print(f'\n8. Issue 30: LWTA over ReLU, batch {args.batch}, {torch.get_num_threads()} threads, medians of '
          f'{args.repeats} interleaved repeats (eval: {args.repeats * 3})  [load avg {os.getloadavg()[0]:.1f}]')
    print(f'  {"":<52}{"relu s":>9}{"compiled s":>11}{"lwta s":>9}{"lwta/relu":>11}{"target":>9}'
          f'{"lwta/compiled":>15}')
    for label, depth, widen, precision, what, target in ISSUE30_ROWS:
        relu, lwta_ = medians[depth, precision, what, 'relu'], medians[depth, precision, what, 'lwta']
        comp = medians.get((depth, precision, what, 'relu compiled'))
        name = label if depth != 34 else f'WRN-34-1 {label}'
        print(f'  {name:<52}{relu:9.4f}{comp if comp else float("nan"):11.4f}{lwta_:9.4f}{lwta_ / relu:10.2f}x'
              f'{"<= %.2fx" % target:>9}' + (f'{lwta_ / comp:14.2f}x' if comp else f'{"-":>15}'))
    memory = {}
    for act in ('relu', 'lwta'):
        torch.manual_seed(0)
        model = lwta_zoo.WideResNet(depth=34, widen_factor=1, act=act).to(device)
        memory[act] = saved_bytes(lambda: elbo_loss(model, x, y))
    print(f'  {"WRN-34-1 memory saved for backward, float32":<52}{memory["relu"] / 2 ** 20:8.0f}M{"":>11}'
          f'{memory["lwta"] / 2 ** 20:8.0f}M{memory["lwta"] / memory["relu"]:10.2f}x{"<= 1.10x":>9}')
    for note in notes:
        print(f'  {note}')
    if args.compile:
        print('  compiled ReLU: WRN-34-1 float32 only (compiling a network takes minutes on this CPU; the bf16 and '
              'WRN-16-4 rows compare with eager ReLU)')


def sampling_benchmark(args, device: torch.device, model: nn.Module) -> None:
    x = torch.rand(args.small_batch, 3, 32, 32, device=device)
    model.eval()

    def predict(L: int, max_batch: int | None = None) -> Callable[[], object]:
        net = MultiSample(model, samples=L, max_batch=max_batch).eval()

        def run() -> torch.Tensor:
            with torch.no_grad():
                return net(x)
        return run

    def loop(L: int) -> Callable[[], object]:
        def run() -> torch.Tensor:
            with torch.no_grad():
                return torch.stack([model(x) for _ in range(L)]).mean(0)
        return run

    medians = timed({'L=1': predict(1), 'L=5 folded': predict(5), 'L=5 loop of single forwards': loop(5),
                     'L=20 folded, one forward': predict(20, max_batch=20 * len(x)),
                     'L=20 folded, default max_batch': predict(20),
                     'L=20 loop of single forwards': loop(20)}, args.repeats, device)
    report(f'3. L-sample prediction, WRN-34-1 LWTA, batch {len(x)}', medians, 'L=1',
           {'L=5 folded': '<= 5x L=1'})


def eot_benchmark(args, device: torch.device, model: nn.Module) -> None:
    x = torch.rand(args.small_batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (len(x),), device=device)
    model.eval()
    k = 20
    medians = timed({
        f'EoT-{k} batched': lambda: input_gradient(model, x, y, eot_samples=k),
        f'EoT-{k} loop': lambda: torch.stack([input_gradient(model, x, y) for _ in range(k)]).mean(0),
    }, args.repeats, device)
    report(f'4. EoT-{k} input gradient, WRN-34-1 LWTA, batch {len(x)}', medians, f'EoT-{k} batched')


def apgd_benchmark(args, device: torch.device, model: nn.Module, batch: int) -> None:
    from pyautoattack.autopgd_base import APGDAttack

    x = torch.rand(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (len(x),), device=device)
    model.eval()
    k, steps = 20, args.apgd_steps

    def attack(net: nn.Module, eot_iter: int) -> Callable[[], object]:
        def run() -> object:
            # attack_single_run: the APGD loop on every input (perturb would skip the
            # inputs a random-weight model already misclassifies)
            apgd = APGDAttack(net, n_iter=steps, eps=8 / 255, loss='ce', eot_iter=eot_iter, seed=0, device=device)
            apgd.init_hyperparam(x)
            with torch.enable_grad():
                return apgd.attack_single_run(x, y)
        return run

    medians = timed({f'APGD-CE-EoT-{k} batched': attack(EoTCrossEntropy(model, k, y), 1),
                     f'APGD-CE-EoT-{k} pyautoattack loop': attack(model, k)}, max(1, args.repeats - 1), device)
    report(f'5. APGD-CE, {steps} steps, EoT-{k}, WRN-34-1 LWTA, batch {len(x)}', medians,
           f'APGD-CE-EoT-{k} batched', {f'APGD-CE-EoT-{k} pyautoattack loop': '>= 2x batched'})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--batch', type=int, default=128, help='batch for the WRN and layer benchmarks')
    parser.add_argument('--small-batch', type=int, default=16, help='batch for sampling, EoT and APGD')
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--apgd-steps', type=int, default=5)
    parser.add_argument('--quick', action='store_true', help='tiny sizes: a smoke test of this script')
    parser.add_argument('--sections', default='1,2,3,4,5,6,7,8', help='which of the numbered sections to run')
    parser.add_argument('--no-compile', dest='compile', action='store_false',
                        help="section 8 without the torch.compile'd ReLU")
    args = parser.parse_args()
    sections = {int(n) for n in args.sections.split(',') if n}
    if args.quick:
        args.batch, args.small_batch, args.repeats, args.apgd_steps = 8, 2, 1, 2
    devices = [torch.device('cpu')] + ([torch.device('cuda')] if torch.cuda.is_available() else [])
    print(f'torch {torch.__version__}, {platform.processor() or platform.machine()}, '
          f'{torch.get_num_threads()} threads, {os.cpu_count()} cores, load avg {os.getloadavg()}; '
          f'fused CPU kernel: {"built" if cpu_library() is not None else "NOT available (eager fallback)"}; '
          f'Triton (CUDA kernels): {"yes" if triton_kernels() is not None else "no"}')
    for device in devices:
        print(f'\n===== {device} =====')
        if 1 in sections:
            layer_benchmark(args, device)
        if 2 in sections:
            for depth, widen in [(16, 4), (34, 1)] + ([(34, 10)] if device.type == 'cuda' else []):
                wrn_benchmark(args, device, depth, widen)
        torch.manual_seed(0)
        model = lwta_zoo.WideResNet(depth=34, widen_factor=1, act='lwta').to(device)
        if 3 in sections:
            sampling_benchmark(args, device, model)
        if 4 in sections:
            eot_benchmark(args, device, model)
        if 5 in sections:  # batching pays most where one batch leaves the device idle: two batch sizes
            for batch in sorted({4, args.small_batch}):
                apgd_benchmark(args, device, model, batch)
        if 6 in sections:
            general_u_benchmark(args, device)
        if 7 in sections:
            precision_benchmark(args, device)
        if 8 in sections and device.type == 'cpu':
            issue30_benchmark(args, device)


if __name__ == '__main__':
    main()
