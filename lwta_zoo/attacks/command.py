"""``lwta-zoo eval MODEL_OR_FOLDER --data NPZ --n N --output DIR``: run the suite, write the report.

MODEL_OR_FOLDER is anything ``lwta_zoo.hub.load_pretrained`` reads (an exported folder,
``hf-hub:ORG/NAME``, ``arch.tag``). Without ``--attacks`` the 'default' preset runs (the
strongest attacks at a modest cost); ``--preset papers|adaptive|all`` for the papers'
protocols, the adaptive attacks, everything. The attack budgets are the dataset's: from
``--dataset``, or a dataset name in ``--data`` (a name, or an .npz file name such as
fashion_mnist_test_500.npz); anything else is refused.

DIR holds one evaluation: a report (or the partial of an unfinished run) of another run is refused
unless ``--resume`` continues that same run or ``--overwrite`` replaces it, and a lock file
(``eval.lock``) keeps a second process out. Ctrl-C stops the run with the finished batches saved
(exit status 130); ``--resume`` continues it. To shard the examples over K processes (gloo):

    torchrun --nproc_per_node=K -m lwta_zoo.cli -- eval MODEL --data NPZ --n N --output DIR

(the ``--`` keeps torchrun from reading eval's options, ``--n`` above all, as its own).
"""
from __future__ import annotations

import argparse
import math
import os
import re
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn as nn

from ..runs import RunFolderError, RunLock, take
from . import plots
from .suite import BUDGETS, CHANNELS, PRESETS, evaluate, select, suite

LOCK = 'eval.lock'
# what an evaluation writes into its folder; --overwrite removes these and nothing else
EVAL_FILES = ('report.json', 'report.md', 'partial', *plots.FIGURES)
MODEL_FILES = ('model.safetensors', 'config.json')  # an exported model folder: its reports go under eval/


def load_model(spec: str, samples: Optional[int] = None, eval_tau: Optional[float] = None,
               max_batch: Optional[int] = None, trust_config: bool = False) -> nn.Module:
    """A zoo model with its weights (``lwta_zoo.hub.load_pretrained``: a folder, ``hf-hub:``, ``arch.tag``).

    ``samples`` sets L; ``eval_tau`` switches test-time sampling to the authors' soft relaxation;
    ``max_batch`` caps the rows of a folded forward (L samples, EoT draws); ``trust_config`` loads
    weights that do not record the network they were exported from.
    """
    from ..hub import load_pretrained
    kwargs: Dict[str, Any] = {} if samples is None else {'samples': samples}
    if max_batch is not None:
        kwargs['max_batch'] = max_batch
    if eval_tau is not None:
        kwargs['lwta_args'] = {'eval_tau': eval_tau}
    return load_pretrained(spec, trust_config=trust_config, **kwargs).eval()


def eps_list(text: str) -> List[float]:
    """``--eps-sweep``: comma-separated budgets in 1/255, each a finite number in (0, 255]."""
    values = []
    for part in text.split(','):
        try:
            value = float(part)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and 0 < value <= 255):
            raise argparse.ArgumentTypeError(f'takes comma-separated budgets in 1/255, each a number in (0, 255] '
                                             f'(e.g. 2,4,16), got {text!r}')
        values.append(value)
    return values


def attack_names(text: str) -> List[str]:
    """``--attacks``: comma-separated attack names of the suite, none empty."""
    names = [n.strip() for n in text.split(',')]
    if not all(names):
        raise argparse.ArgumentTypeError(f'takes comma-separated attack names (e.g. pgd20,apgd_mean), got {text!r}; '
                                         'leave it out for a --preset')
    return names


def load_data(spec: str, n: Optional[int] = None, seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inputs in [0, 1], labels and dataset indices of ``n`` test examples (``lwta_zoo.data.subset``'s
    seeded choice) from an .npz or a dataset name known to ``lwta_zoo.data``."""
    from ..data import load_arrays, read_npz, subset
    images, labels = read_npz(spec) if spec.endswith('.npz') else load_arrays(spec, 'test')
    images, index = subset((images, torch.arange(len(labels))), n, seed)
    return images.float().div(255), labels[index], index


def infer_dataset(data: str, dataset: Optional[str], channels: int) -> str:
    """The dataset whose attack budgets apply: ``dataset`` if given, else the one dataset name
    that ``data`` (a name, or an .npz file name) contains; checked against the inputs' channels."""
    if dataset is None:
        name = Path(data).name.lower()
        tokens = re.split(r'[^a-z0-9]+', name[:-4] if name.endswith('.npz') else name)
        spans = [(i, i + len(d.split('_')), d) for d in BUDGETS for i in range(len(tokens))
                 if tokens[i:i + len(d.split('_'))] == d.split('_')]
        # a name inside a longer one ('mnist' in 'fashion_mnist') does not count
        found = sorted({d for a, b, d in spans if not any(a2 <= a and b <= b2 and (a2, b2) != (a, b)
                                                            for a2, b2, _ in spans)})
        if len(found) != 1:
            raise ValueError(f'cannot tell the dataset (and so the attack budgets) from --data {data!r}: its name '
                             f'names {found or "none"} of {sorted(BUDGETS)}; pass --dataset')
        dataset = found[0]
    if dataset not in BUDGETS:
        raise ValueError(f'--dataset must be one of {sorted(BUDGETS)}, got {dataset!r}')
    if CHANNELS[dataset] != channels:
        raise ValueError(f'--data {data!r} has {channels}-channel inputs; {dataset} images have {CHANNELS[dataset]}')
    return dataset


def configure_eval(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``lwta-zoo eval``."""
    parser.description = __doc__
    parser.add_argument('model', help="exported folder, 'hf-hub:ORG/NAME' or 'arch.tag'")
    parser.add_argument('--data', required=True, help='.npz with images (uint8 NHWC) and labels, or a dataset name')
    parser.add_argument('--n', type=int, default=None, help='N test examples, a seeded random subset (default: all)')
    parser.add_argument('--output', required=True, help='folder for report.json, report.md and figures')
    parser.add_argument('--dataset', choices=sorted(BUDGETS), default=None,
                        help='attack budgets (default: the dataset --data names; refused if it names none)')
    parser.add_argument('--preset', choices=PRESETS, default=None,
                        help="attack set (default: 'default', the strongest attacks at a modest cost)")
    parser.add_argument('--attacks', type=attack_names, default=None,
                        help='comma-separated attacks of the suite (instead of --preset)')
    parser.add_argument('--samples', type=int, default=None, help="L samples a prediction (default: the model's)")
    parser.add_argument('--eval-tau', type=float, default=None,
                        help="test-time relaxation temperature (the authors' protocol: 0.01; default: exact samples)")
    parser.add_argument('--repeats', type=int, default=5, help='R fresh predictions per adversarial input')
    parser.add_argument('--twin', default=None, help='deterministic ReLU twin: transfer attack and Fig. 3')
    parser.add_argument('--eot-samples', type=int, default=20)
    parser.add_argument('--max-batch', type=int, default=None,
                        help='rows per forward when L samples or EoT draws fold into the batch (bounds memory; '
                             'default: lwta_zoo.sampling.MAX_BATCH)')
    parser.add_argument('--adaptive-steps', type=int, default=50)
    parser.add_argument('--cw-steps', type=int, default=1000, help='CW iterations per binary-search step')
    parser.add_argument('--cw-binary-steps', type=int, default=10)
    parser.add_argument('--eps-sweep', type=eps_list, default=[],
                        help='extra eps in 1/255, each in (0, 255], e.g. 2,4,16 (for the eps plot; added to a '
                             "preset; with --attacks, name the sweep's attacks, e.g. pgd20@2/255)")
    parser.add_argument('--random-inputs', type=int, default=1000, help='uniform-noise images (0: no Random attack)')
    parser.add_argument('--batch-size', type=int, default=100)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--threads', type=int, default=None, help='torch CPU threads')
    parser.add_argument('--resume', action='store_true', help='continue the run of DIR/partial (the same run only)')
    parser.add_argument('--overwrite', action='store_true',
                        help="replace the evaluation DIR holds (its report, figures and partial; nothing else)")
    parser.add_argument('--trust-config', action='store_true',
                        help='load weights that do not record the network they were exported from (third-party '
                             'safetensors) as the config says')
    parser.add_argument('--no-figures', action='store_true')
    parser.add_argument('--no-progress', action='store_true')
    parser.set_defaults(func=run_eval)


def check_inputs(model: nn.Module, x: torch.Tensor, y: torch.Tensor, where: str) -> None:
    """Refuse, before any attack runs, labels the model cannot output and inputs the model does not take:
    another channel count than its ``pretrained_cfg['input_size']``, or another size where the config
    says ``fixed_input_size`` (timm's convention; pooled models take any size, as training allows)."""
    from ..data import check_labels
    check_labels(y, getattr(model, 'num_classes', int(y.max()) + 1), where)
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    expected = tuple(cfg.get('input_size') or ())
    got = tuple(x.shape[1:])
    if expected and (got[0] != expected[0] or (cfg.get('fixed_input_size') and got != expected)):
        raise ValueError(f'{where}: inputs are {got} (C, H, W), the model takes {expected}')


def claim_output(folder: Path, *, resume: bool, overwrite: bool) -> RunLock:
    """Check that this evaluation may write into ``folder``, then lock it (see the module docstring).

    Refused, with nothing on disk changed: a file, an exported model folder, a folder another live process
    evaluates into, and one that holds an evaluation unless ``resume`` (the partial and report are then
    checked to be this run's) or ``overwrite`` (which removes ``EVAL_FILES``, once the lock is held).
    """
    if resume and overwrite:
        raise RunFolderError('--resume and --overwrite contradict each other: choose one')
    if folder.exists() and not folder.is_dir():
        raise RunFolderError(f'--output {folder} exists and is not a folder')
    model = [f for f in MODEL_FILES if (folder / f).exists()]
    if model:
        raise RunFolderError(f'--output {folder} is a model folder ({", ".join(model)}); write its reports to '
                             f'{folder / "eval" / "NAME"}, where the card and push find them')
    lock = RunLock(folder, LOCK, 'eval')
    lock.check()
    held = [f for f in EVAL_FILES if (folder / f).exists()]
    if held and not (resume or overwrite):
        raise RunFolderError(f'--output {folder} holds an evaluation ({", ".join(held)}); continue that run with '
                             '--resume, replace it with --overwrite, or choose another --output')
    return take(lock, held if overwrite else [])


def run_eval(args: argparse.Namespace) -> int:
    """Load the model and data, run the suite, write the report (and figures) to ``args.output``."""
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.attacks and args.preset:
        raise ValueError('give --attacks or --preset, not both')
    device = torch.device('cuda', int(os.environ.get('LOCAL_RANK', 0))) if torch.cuda.is_available() else None
    model = load_model(args.model, args.samples, args.eval_tau, args.max_batch, args.trust_config).to(device or 'cpu')
    twin = load_model(args.twin, trust_config=args.trust_config).to(device or 'cpu') if args.twin else None
    x, y, index = load_data(args.data, args.n, args.seed)
    check_inputs(model, x, y, args.data)
    dataset = infer_dataset(args.data, args.dataset, x.shape[1])
    attacks = suite(dataset, eot_samples=args.eot_samples, adaptive_steps=args.adaptive_steps,
                    cw_steps=args.cw_steps, cw_binary_steps=args.cw_binary_steps,
                    eps_sweep=[e / 255 for e in args.eps_sweep], twin=twin, twin_name=args.twin or '')
    attacks = select(attacks, args.attacks, None if args.attacks else args.preset or 'default')
    unused = [f'{e:g}' for e in args.eps_sweep if not any(a.name.endswith(f'@{e:g}/255') for a in attacks)]
    if unused:
        raise ValueError(f'--eps-sweep {",".join(unused)}: --attacks names none of the attacks at that budget '
                         f'(e.g. pgd20@{unused[0]}/255); name them in --attacks or drop them from --eps-sweep')
    output = Path(args.output)
    rank = int(os.environ.get('RANK', 0))  # under torchrun, the process that writes the report claims its folder
    lock = claim_output(output, resume=args.resume, overwrite=args.overwrite) if rank == 0 else None
    try:
        report = evaluate(model, x, y, attacks, repeats=args.repeats, batch_size=args.batch_size, seed=args.seed,
                          random_inputs=args.random_inputs, output=output, resume=args.resume,
                          progress=not args.no_progress, estimate=True,
                          identity={'model': args.model, 'data': args.data, 'twin': args.twin},
                          meta={'command': getattr(args, 'command_line', None), 'model': args.model,
                                'eval_tau': args.eval_tau, 'data': args.data, 'preset': args.preset,
                                'indices': index.tolist(), 'dataset_budgets': dataset, 'twin': args.twin})
        if rank == 0:
            if not args.no_figures:
                plots.make_figures(report, model, x, y, output, BUDGETS[dataset]['eps'], twin)
            print((output / 'report.md').read_text())
    except KeyboardInterrupt:
        if rank == 0:
            print(f'lwta-zoo eval: interrupted; the finished batches are saved in {output / "partial"}: the same '
                  'command with --resume continues from there', file=sys.stderr)
        return 130
    finally:
        if lock is not None:
            lock.release()
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0
