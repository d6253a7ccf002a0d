"""Where the time of a WRN-34-1 step goes: ``python -m benchmarks.profile [--batch B] [--steps K]``.

torch.profiler's per-op table (self CPU time, the top rows) of K training steps (forward, ELBO
backward, SGD step) and K eval forwards of WRN-34-1, ReLU beside LWTA, in float32 and in bf16
autocast + channels_last (the fast recipes' setting), after one warm-up call each. The fused
LWTA kernels show up as their custom ops (``lwta_zoo::...``). ``--unfused`` profiles LWTA with
BatchNorm and LWTA as two modules (``lwta_zoo.unfuse_batchnorm_lwta``).
"""
from __future__ import annotations

import argparse
import platform

import torch
from torch.profiler import ProfilerActivity, profile

import lwta_zoo

from .run import N_TRAIN, PRECISIONS, precision_forward, precision_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--batch', type=int, default=32)
    parser.add_argument('--steps', type=int, default=3)
    parser.add_argument('--rows', type=int, default=18, help='rows of each table')
    parser.add_argument('--unfused', action='store_true', help='LWTA as BatchNorm then LWTA, two modules')
    parser.add_argument('--precisions', default='fp32,bf16 + channels_last', help='comma-separated, of fp32 and '
                        "'bf16 + channels_last'")
    args = parser.parse_args()
    print(f'# python -m benchmarks.profile --batch {args.batch} --steps {args.steps} --precisions {args.precisions!r}'
          f'{" --unfused" if args.unfused else ""}\n# torch {torch.__version__}, {platform.processor()}, '
          f'{torch.get_num_threads()} threads; ELBO KL weight 1/{N_TRAIN}')
    x = torch.rand(args.batch, 3, 32, 32)
    y = torch.randint(0, 10, (args.batch,))
    for precision in args.precisions.split(','):
        bf16, channels_last = PRECISIONS[precision]
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        for act in ('relu', 'lwta'):
            torch.manual_seed(0)
            model = lwta_zoo.WideResNet(depth=34, widen_factor=1, act=act).to(memory_format=fmt)
            if args.unfused:
                lwta_zoo.unfuse_batchnorm_lwta(model)
            xf = x.contiguous(memory_format=fmt)
            for what, fn in (('training step', precision_step(model, xf, y, bf16)),
                             ('eval forward', precision_forward(model, xf, bf16))):
                fn()
                with profile(activities=[ProfilerActivity.CPU]) as prof:
                    for _ in range(args.steps):
                        fn()
                table = prof.key_averages().table(sort_by='self_cpu_time_total', row_limit=args.rows,
                                                  max_name_column_width=44)
                print(f'\n## WRN-34-1 {act}, {what}, {precision}, batch {args.batch}, {args.steps} calls\n{table}')


if __name__ == '__main__':
    main()
