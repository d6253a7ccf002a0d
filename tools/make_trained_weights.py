"""Publish the models this repo trains (recipes/) in lwta_zoo/weights/, family by family.

FAMILY is one of ``FAMILIES``: ``fmnist`` (the four Fashion-MNIST networks of recipes/fmnist_*_pgd.yaml),
``fmnist_vs`` (the AISTATS paper's Table 4 on Fashion-MNIST: the Softmax network trained five ways with no
adversarial training, recipes/aistats_softmax_fmnist_*_vs.yaml), ``cifar10_wrn34_1`` (the three WideResNet-34-1 of
recipes/cifar10_wrn34_1_*_fast.yaml), ``cifar10_wrn34_1_60ep`` (ReLU and LWTA of those trained for 60 epochs,
recipes/cifar10_wrn34_1_*_fast_60ep.yaml), or the AISTATS paper's section 4.3.3 networks, ``margins_lenet5`` and
``margins_vgg_small`` (recipes/margins_*.yaml; their --eval-commands end with the ``lwta-zoo margins`` run over the
family's three models). For each
trained run (its folder's export/, written by ``lwta-zoo train``) this measures clean accuracy with
L=1, seeds 0-2, on the test subset the repo ships (which tests/test_published.py checks) and on the
family's larger test set, adds the ``lwta-zoo eval`` reports in <run>/eval/*/ to the model card and
copies them beside the weights, records the training cost from the run's log, and writes
lwta_zoo/weights/<arch>.<tag>/.

    python tools/make_trained_weights.py FAMILY --train-commands [KEY ...] | sh   # the runs
    python tools/make_trained_weights.py FAMILY --eval-commands [KEY ...] | sh    # their reports
    python tools/make_trained_weights.py FAMILY [KEY ...]                         # publish

``--shipped`` updates the shipped folders in place without the training runs: the clean rows measured
again from the shipped weights, and the reports in <run>/eval/*/ (if any) in place of the shipped ones
of the same name.
"""
import argparse
import dataclasses
import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import timm
import torch

from lwta_zoo.data import load_arrays, read_npz
from lwta_zoo.hub import load_pretrained, save_pretrained
from lwta_zoo import table4
from publishing import ROOT, clean_result, copy_reports, report_results

ADAPTIVE = '--attacks pgd20,eot_pgd,pgd_mean,pgd_max,pgd_ste,apgd_mean --adaptive-steps 20 --eot-samples 5'


def _fmnist_test() -> Tuple[torch.Tensor, torch.Tensor]:
    return load_arrays('fashion_mnist', 'test', download=False)  # apt-get install dataset-fashion-mnist


def _cifar10_1k() -> Tuple[torch.Tensor, torch.Tensor]:
    return read_npz(ROOT.parent / 'shared/data/cifar10_test_1k.npz')


# The AISTATS paper's section 4.3.3 networks (lwta_zoo/models/margin_nets.py): KEY -> method tag. Their
# margins (docs/margins.md) are one lwta-zoo margins run over a family's three models: MARGINS below.
MARGIN_METHODS = {'relu': 'relu', 'lwta': 'lwta_u2', 'lwta_ibp': 'lwta_ibp_u2'}
MARGINS = {'margins_lenet5': '--n 500', 'margins_vgg_small': '--n 200'}  # lwta-zoo margins arguments



@dataclass(frozen=True)
class Family:
    """What one family of trained models shares: names, recipes, run folders, test data and reports."""
    dataset: str
    dataset_name: str
    models: Dict[str, str]  # KEY -> the published 'arch.tag'
    recipe: str  # recipe path, {key} filled in
    run: str  # run folder relative to the repo, {key} filled in
    train_args: str  # what the training command adds to the recipe
    machine: str  # how the runs shared the machine (the card's summary says it)
    subset: str  # the shipped test subset: 'PATH: what it holds'
    larger: str  # the larger test set's description
    load_larger: Callable[[], Tuple[torch.Tensor, torch.Tensor]]
    data: str  # ``lwta-zoo eval --data``
    evals: Callable[[str], Dict[str, str]]  # KEY -> {report folder: eval arguments}

    def run_folder(self, key: str, runs: Optional[Path]) -> Path:
        return (runs / key) if runs else ROOT / self.run.format(key=key)


FMNIST_DATA = dict(  # what the Fashion-MNIST families share: data, shipped subset, larger test set
    dataset='fashion_mnist', dataset_name='Fashion-MNIST',
    subset='lwta_zoo/data/fashion_mnist_test_500.npz: the first 50 test images of each class',
    larger='fashion_mnist test split: all 10,000 images', load_larger=_fmnist_test, data='fashion_mnist')

FAMILIES = {
    'fmnist': Family(
        **FMNIST_DATA,
        models={'relu': 'aistats_softmax_mnist.relu_fmnist_pgd', 'lwta': 'aistats_softmax_mnist.lwta_u2_fmnist_pgd',
                'lwta_adaptive': 'aistats_softmax_mnist.lwta_u2_fmnist_adaptive_pgd',
                'lwta_ibp': 'aistats_softmax_mnist.lwta_ibp_u2_fmnist_pgd'},
        recipe='recipes/fmnist_{key}_pgd.yaml', run='runs/fmnist/{key}', train_args='train.threads=1',
        machine='Trained on CPU, one thread, with three other trainings sharing the same 2 cores',
        evals=lambda key: {
            'suite_n1000': f'--n 1000 {ADAPTIVE} --batch-size 250',
            # the papers' protocols: CW and Blind-Spot at the suite's default budget, 1000 steps x 10
            # binary-search steps, which fools undefended networks. LWTA models predict with L=1 here, as
            # in the reports these replace: at their default L=5 every step costs five forwards, and CW
            # and Blind-Spot alone would take about ten hours of a core per model
            'papers_n100': '--n 100 --preset papers --batch-size 100' + ('' if key == 'relu' else ' --samples 1'),
            # CW on the mean surrogate, the adaptive L2 attack, on the papers' 100 examples at their L=1 (for the
            # deterministic ReLU network it is the papers' CW, already in papers_n100)
            **({} if key == 'relu' else {'cw_mean_n100': '--n 100 --attacks cw_mean --batch-size 100 --samples 1'})}),
    'fmnist_vs': Family(
        **FMNIST_DATA,
        models={m: table4.model_name(m) for m in table4.METHODS},  # Table 4's rows, in its order
        recipe='recipes/aistats_softmax_fmnist_{key}_vs.yaml', run='runs/fmnist_vs/{key}', train_args='train.threads=1',
        machine='Trained on CPU, one torch thread, on one core of a 2-core machine shared with other work',
        evals=lambda key: {
            # the AISTATS paper's Table 4 protocol at Fashion-MNIST's eps 0.1 (ours; the paper's MNIST eps is 0.3):
            # PGD with 500 iterations at the model's L (the paper's S=5 for the stochastic methods), and the
            # Random attack (every report measures it); CW and Blind-Spot at L=1: at L=1 they took 0.3-1.4 h per
            # model in the fmnist family's papers_n100 reports (their time_s), and at L=5 every step costs five
            # forwards, about 1.7-7 h, over the budget of about 2 h of a core per model's evaluation
            table4.PAPERS_PGD: '--n 100 --attacks aistats_pgd --batch-size 100',
            table4.PAPERS_CW: '--n 100 --attacks aistats_cw,aistats_blind_spot --samples 1 --batch-size 100',
            # the adaptive suite of the other Fashion-MNIST models at the model's L; its first 100 examples
            # are the papers' 100 (the same seeded permutation), so the reports pair
            table4.ADAPTIVE: f'--n 500 {ADAPTIVE} --batch-size 250'}),
    'cifar10_wrn34_1': Family(
        dataset='cifar10', dataset_name='CIFAR-10',
        models={'relu': 'wrn34_1.cifar10_nfgsm', 'lwta': 'wrn34_1_lwta.cifar10_nfgsm',
                'lwta_adaptive': 'wrn34_1_lwta.cifar10_adaptive_nfgsm'},
        recipe='recipes/cifar10_wrn34_1_{key}_fast.yaml', run='runs/cifar10_wrn34_1_{key}_fast',
        train_args='train.threads=1 --data-dir ../shared/data',
        machine=('Trained on a 2-core CPU (bf16 autocast, channels_last) shared with the evaluations of other '
                 'models, in resumed pieces of at most 3 hours, with 1 or 2 torch threads'),
        subset=('lwta_zoo/data/cifar10_test_500.npz: the first 50 images of each class, from a public JPEG '
                're-encoding of the CIFAR-10 test set'),
        larger='../shared/data/cifar10_test_1k.npz: 1,000 images of a public JPEG re-encoding of the CIFAR-10 '
               'test set', load_larger=_cifar10_1k, data='../shared/data/cifar10_test_1k.npz',
        evals=lambda key: {
            'suite_n1000': f'--n 1000 {ADAPTIVE} --batch-size 125',
            **({} if key == 'relu' else {'samples5_n1000': '--n 1000 --samples 5 --attacks pgd20 --batch-size 125'}),
            'autoattack_n200': '--n 200 --batch-size 100 --attacks '
                               + ('autoattack_standard' if key == 'relu' else 'autoattack_rand')}),
    'margins_lenet5': Family(
        dataset='fashion_mnist', dataset_name='Fashion-MNIST',
        models={key: f'lenet5_mnist.{tag}_fmnist' for key, tag in MARGIN_METHODS.items()},
        recipe='recipes/margins_lenet5_fmnist_{key}.yaml', run='runs/margins/lenet5_fmnist_{key}',
        train_args='train.threads=1', machine='Trained on CPU, one thread, on a 2-core machine shared with other work',
        subset='lwta_zoo/data/fashion_mnist_test_500.npz: the first 50 test images of each class',
        larger='fashion_mnist test split: all 10,000 images', load_larger=_fmnist_test, data='fashion_mnist',
        evals=lambda key: {'suite_n1000': f'--n 1000 {ADAPTIVE} --batch-size 250'}),
    'margins_vgg_small': Family(
        dataset='cifar10', dataset_name='CIFAR-10',
        models={key: f'vgg_small_cifar10.{tag}_cifar10' for key, tag in MARGIN_METHODS.items()},
        recipe='recipes/margins_vgg_small_cifar10_{key}.yaml', run='runs/margins/vgg_small_cifar10_{key}',
        train_args='train.threads=1 --data-dir ../shared/data',
        machine='Trained on CPU, one thread, on a 2-core machine shared with other work',
        subset=('lwta_zoo/data/cifar10_test_500.npz: the first 50 images of each class, from a public JPEG '
                're-encoding of the CIFAR-10 test set'),
        larger='../shared/data/cifar10_test_1k.npz: 1,000 images of a public JPEG re-encoding of the CIFAR-10 '
               'test set', load_larger=_cifar10_1k, data='../shared/data/cifar10_test_1k.npz',
        evals=lambda key: {'suite_n500': '--n 500 --attacks pgd20,pgd_mean --batch-size 125'}),
}
# The same WRN-34-1 runs trained twice as long (recipes/cifar10_wrn34_1_{key}_fast_60ep.yaml extend the 30-epoch
# ones): same reports, new tags. The runs train in float32 where the CPU has no native bfloat16 (an AVX2 AMD EPYC
# emulates bf16 autocast at a tenth of float32's speed); the card lists each (re)start's arithmetic and machine.
FAMILIES['cifar10_wrn34_1_60ep'] = dataclasses.replace(
    FAMILIES['cifar10_wrn34_1'],
    models={'relu': 'wrn34_1.cifar10_nfgsm_60ep', 'lwta': 'wrn34_1_lwta.cifar10_nfgsm_60ep'},
    recipe='recipes/cifar10_wrn34_1_{key}_fast_60ep.yaml', run='runs/cifar10_wrn34_1_{key}_fast_60ep',
    train_args='train.threads=1 train.bf16=false --data-dir ../shared/data',
    machine=('Trained on a 2-core CPU (channels_last; bf16 autocast or float32 as each machine setting below says) '
             'shared with other work, in resumed pieces of at most 3 hours, with 1 or 2 torch threads'))


def training_cost(log: List[Dict[str, Any]], steps_trained: int) -> Dict[str, Any]:
    """Hours of training steps, in all and on each machine setting, from a run's metrics.jsonl records.

    A step record's ``sec_per_step`` is the mean since its epoch (re)started, so an epoch splits into
    pieces at the (re)starts: each piece's last record times its steps (to the next (re)start or the
    epoch's end), on the machine setting its (re)start logged. The per-epoch guard and the monitoring
    evaluations are not in it.
    """
    records = [r for r in log if 'sec_per_step' in r]
    if not records:
        return {}
    per_epoch = round(records[0]['step'] / records[0]['epoch'])  # step = epoch x steps per epoch
    pieces: Dict[Tuple[int, int], Tuple[float, str]] = {}  # (epoch, step of its (re)start): rate, machine
    machine, started = 'unknown', 0
    for r in log:
        if 'start' in r:
            machine = (f"{r['machine']['processor']}, {r['machine']['cpus']} CPUs, "
                       f"{r['machine']['torch_threads']} torch thread(s)"
                       + ('' if 'bf16' not in r else ', bf16 autocast' if r['bf16'] else ', float32'))
            started = r['step']
        elif 'sec_per_step' in r:
            epoch = math.ceil(r['epoch'])  # epoch e holds steps (e - 1, e] x per_epoch
            pieces[epoch, max(started, (epoch - 1) * per_epoch)] = r['sec_per_step'], machine
    hours: Dict[str, float] = {}
    for (epoch, begin), (sec, where) in pieces.items():
        end = min([b for e, b in pieces if e == epoch and b > begin] + [epoch * per_epoch, steps_trained])
        hours[where] = hours.get(where, 0.0) + sec * (end - begin) / 3600
    return {'train_step_hours': round(sum(hours.values()), 2),
            'machines': [f'{where} ({h:.1f} h)' for where, h in sorted(hours.items())]}


def clean_curve(log: List[Dict[str, Any]]) -> List[Dict[str, float]]:
    """Clean test accuracy against epoch: the run's evaluations every ``eval.every`` epochs and its final one."""
    return [{'epoch': round(r['epoch'], 3), 'test_clean_acc': r['test_clean_acc']} for r in log if 'test_clean_acc' in r]


def training_provenance(family: Family, run: Path, key: str) -> Dict[str, Any]:
    """How the weights were trained: the command, steps, cost and the run's own final evaluation."""
    log = [json.loads(line) for line in (run / 'metrics.jsonl').read_text().splitlines() if line.strip()]
    recipe = json.loads((run / 'export' / 'config.json').read_text())['recipe']
    # (re)starts logged before the records said their arithmetic ran the recipe's
    log = [{'bf16': recipe['train'].get('bf16', False), **r} if 'start' in r else r for r in log]
    speeds = [r['sec_per_step'] for r in log if 'sec_per_step' in r]
    final = json.loads((run / 'final_metrics.json').read_text())
    command = f'lwta-zoo train {family.recipe.format(key=key)} {family.train_args} --output {family.run.format(key=key)}'
    return {
        'summary': (f'Trained by this repo: `{command}` ({recipe["description"].strip()}) {family.machine}; the '
                    'results below were measured after training by the commands they name.'),
        'train_command': command,
        'steps_trained': final['steps_trained'],
        'seconds_per_step_median': round(statistics.median(speeds), 2) if speeds else None,
        **training_cost(log, final['steps_trained']),
        'training_run_final_eval': {k: final[k] for k in ('test_clean_acc', 'test_n', 'test_pgd_acc', 'test_pgd_n',
                                                            'pgd', 'guard')
                                    if k in final and (k != 'pgd' or 'test_pgd_acc' in final)},  # an attack that ran
        'clean_accuracy_curve': clean_curve(log),
    }


def clean_results(family: Family, model: torch.nn.Module, key: str) -> List[Dict[str, Any]]:
    """Clean accuracy (L=1, seeds 0-2) on the shipped subset and on the family's larger test set."""
    sub_images, sub_y = read_npz(ROOT / family.subset.split(':')[0])
    images, y = family.load_larger()
    results = [clean_result(model, sub_images.float() / 255, sub_y, data=family.subset),
               clean_result(model, images.float() / 255, y, data=family.larger)]
    print(key, [(r['name'], r['per_seed']) for r in results])
    return results


def republish(family: Family, runs: Optional[Path], key: str) -> Path:
    """Update a shipped folder in place, no training run needed: its clean rows measured again from its
    own weights (after a change of the sampling noise, say), and the reports in <run>/eval/*/ (if any)
    in place of the shipped ones of the same name; tools/make_model_cards.py then writes the card."""
    folder = ROOT / 'lwta_zoo/weights' / family.models[key]
    fresh = {r['data']: r for r in clean_results(family, load_pretrained(folder, samples=1).eval(), key)}
    copy_reports(sorted(p.parent for p in (family.run_folder(key, runs) / 'eval').glob('*/report.json')), folder)
    shipped = sorted(p.parent for p in (folder / 'eval').glob('*/report.json'))
    config = json.loads((folder / 'config.json').read_text())
    seeded = [fresh.get(r.get('data'), r) for r in config['metrics']['results'] if 'protocol_label' not in r]
    config['metrics']['results'] = seeded + report_results(shipped)
    (folder / 'config.json').write_text(json.dumps(config, indent=2) + '\n')
    return folder


def publish(family: Family, runs: Optional[Path], key: str) -> Path:
    """lwta_zoo/weights/<arch>.<tag>/ from the run of ``key``."""
    run = family.run_folder(key, runs)
    model = load_pretrained(run / 'export', samples=1).eval()
    results = clean_results(family, model, key)
    reports = sorted(p.parent for p in (run / 'eval').glob('*/report.json'))
    results += report_results(reports)
    metrics = {'dataset': family.dataset, 'dataset_name': family.dataset_name, 'split': 'test', 'results': results}
    recipe = json.loads((run / 'export' / 'config.json').read_text())['recipe']
    published = timm.create_model(family.models[key], samples=1)  # the tag's pretrained_cfg, same layers
    published.load_state_dict(model.state_dict())
    out = ROOT / 'lwta_zoo/weights' / family.models[key]
    save_pretrained(published, out, recipe=recipe, metrics=metrics, provenance=training_provenance(family, run, key))
    copy_reports(reports, out)
    return out


def _relative(path: Path) -> Path:
    path = path.resolve()
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def train_commands(family: Family, runs: Optional[Path], key: str) -> List[str]:
    """The ``lwta-zoo train`` command of ``key`` (add ``--resume`` to continue an interrupted run)."""
    return [f'lwta-zoo train {family.recipe.format(key=key)} {family.train_args} '
            f'--output {_relative(family.run_folder(key, runs))}']


def eval_commands(family: Family, runs: Optional[Path], key: str) -> List[str]:
    """The ``lwta-zoo eval`` commands that write <run>/eval/<name>/ for every report of the family."""
    out = _relative(family.run_folder(key, runs))
    return [f'lwta-zoo eval {family.models[key]} --data {family.data} {args} --threads 1 --no-progress '
            f'--output {out / "eval" / name}' for name, args in family.evals(key).items()]


def margins_command(name: str, family: Family, runs: Optional[Path]) -> str:
    """The ``lwta-zoo margins`` command that draws the family's models on one figure (its runs' exports)."""
    exports = ' '.join(str(_relative(family.run_folder(key, runs)) / 'export') for key in family.models)
    out = _relative(family.run_folder('margins', runs))
    return f'lwta-zoo margins {exports} --data {family.data} {MARGINS[name]} --threads 1 --output {out}'


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('family', choices=sorted(FAMILIES))
    p.add_argument('keys', nargs='*', metavar='KEY', help='which runs (default: all of the family)')
    p.add_argument('--runs', type=Path, default=None, help='folder holding the runs as <runs>/<KEY> '
                                                           "(default: the family's run folders)")
    p.add_argument('--train-commands', action='store_true', help='print the training commands and stop')
    p.add_argument('--eval-commands', action='store_true', help='print the eval commands of the reports and stop')
    p.add_argument('--shipped', action='store_true',
                   help='update the shipped folders in place: clean rows measured again, reports from <run>/eval')
    args = p.parse_intermixed_args()  # KEYs before or after the flags, as the README writes them
    family = FAMILIES[args.family]
    unknown = set(args.keys) - set(family.models)
    if unknown:
        p.error(f'unknown KEY {sorted(unknown)} of {args.family}; one of {list(family.models)}')
    keys = args.keys or list(family.models)
    for wanted, commands in ((args.train_commands, train_commands), (args.eval_commands, eval_commands)):
        if wanted:
            print('\n'.join(c for key in keys for c in commands(family, args.runs, key)))
            if args.eval_commands and args.family in MARGINS:
                print(margins_command(args.family, family, args.runs))
            return
    torch.set_num_threads(1)
    for key in keys:
        folder = republish(family, args.runs, key) if args.shipped else publish(family, args.runs, key)
        print(f'wrote {folder.relative_to(ROOT)}')


if __name__ == '__main__':
    main()
