"""Publish the Fashion-MNIST models this repo trains (recipes/fmnist_*_pgd.yaml) in lwta_zoo/weights/.

For each trained run (RUNS/<key>/export, written by ``lwta-zoo train``) this measures clean
accuracy with L=1, seeds 0-2, on the whole Fashion-MNIST test set (10,000 images, wherever
``lwta_zoo.data`` finds it: ``apt-get install dataset-fashion-mnist``) and on the subset the repo
ships (lwta_zoo/data/fashion_mnist_test_500.npz, which tests/test_published.py checks), adds the
``lwta-zoo eval`` reports in RUNS/<key>/eval/*/ to the model card and copies them beside the
weights, and writes lwta_zoo/weights/aistats_softmax_mnist.<tag>/.

    lwta-zoo train recipes/fmnist_<key>_pgd.yaml train.threads=1 --output runs/fmnist/<key>
    python tools/make_fmnist_weights.py --eval-commands [KEY ...] | sh   # the reports (``EVALS``)
    python tools/make_fmnist_weights.py [--runs runs/fmnist] [KEY ...]

The reports: ``suite_n1000`` (PGD-20 and the adaptive attacks, n=1000) and ``papers_n100`` (the
papers' protocols, ``--preset papers``: CW and Blind-Spot at the suite's default budget, 1000 steps
x 10 binary-search steps, which fools undefended networks; n=100).
"""
import argparse
import json
import statistics
from pathlib import Path

import timm
import torch

from lwta_zoo.data import load_arrays, read_npz
from lwta_zoo.hub import load_pretrained, save_pretrained
from publishing import ROOT, clean_result, copy_reports, report_results

ARCH = 'aistats_softmax_mnist'
TAGS = {'relu': 'relu_fmnist_pgd', 'lwta': 'lwta_u2_fmnist_pgd', 'lwta_adaptive': 'lwta_u2_fmnist_adaptive_pgd',
        'lwta_ibp': 'lwta_ibp_u2_fmnist_pgd'}
SUBSET = 'lwta_zoo/data/fashion_mnist_test_500.npz: the first 50 test images of each class'
EVALS = {
    'suite_n1000': '--n 1000 --attacks pgd20,eot_pgd,pgd_mean,pgd_max,pgd_ste,apgd_mean --adaptive-steps 20 '
                   '--eot-samples 5 --batch-size 250',
    'papers_n100': '--n 100 --preset papers --batch-size 100',
}
FULL = 'fashion_mnist test split: all 10,000 images'


def training_provenance(run: Path, key: str) -> dict:
    """How the weights were trained: the command, steps, speed and the run's own final evaluation."""
    logs = [json.loads(line) for line in (run / 'metrics.jsonl').read_text().splitlines() if line.strip()]
    speeds = [r['sec_per_step'] for r in logs if 'sec_per_step' in r]
    final = json.loads((run / 'final_metrics.json').read_text())
    recipe = json.loads((run / 'export' / 'config.json').read_text())['recipe']
    return {
        'summary': (
            f'Trained by this repo: `lwta-zoo train recipes/fmnist_{key}_pgd.yaml train.threads=1` '
            f'({recipe["description"].strip()}) Trained on CPU, one thread, with three other trainings sharing '
            'the same 2 cores; the results below were measured after training by the commands they name.'),
        'train_command': f'lwta-zoo train recipes/fmnist_{key}_pgd.yaml train.threads=1 --output runs/fmnist/{key}',
        'steps_trained': final['steps_trained'],
        'seconds_per_step_median': round(statistics.median(speeds), 2) if speeds else None,
        'training_run_final_eval': {k: final[k] for k in ('test_clean_acc', 'test_n', 'test_pgd_acc', 'test_pgd_n',
                                                            'pgd') if k in final},
    }


def clean_results(model: torch.nn.Module, key: str) -> list:
    """Clean accuracy (L=1, seeds 0-2) on the shipped subset and on the whole test set."""
    sub_images, sub_y = read_npz(ROOT / SUBSET.split(':')[0])
    full_images, full_y = load_arrays('fashion_mnist', 'test', download=False)
    results = [clean_result(model, sub_images.float() / 255, sub_y, data=SUBSET),
               clean_result(model, full_images.float() / 255, full_y, data=FULL)]
    print(key, [(r['name'], r['per_seed']) for r in results])
    return results


def republish(runs: Path, key: str) -> Path:
    """Update a shipped folder in place, no training run needed: its clean rows measured again from its
    own weights (after a change of the sampling noise, say), and the reports in RUNS/<key>/eval/*/ (if
    any) in place of the shipped ones of the same name; tools/make_model_cards.py then writes the card."""
    folder = ROOT / 'lwta_zoo/weights' / f'{ARCH}.{TAGS[key]}'
    fresh = {r['data']: r for r in clean_results(load_pretrained(folder, samples=1).eval(), key)}
    reports = sorted(p.parent for p in (runs / key / 'eval').glob('*/report.json'))
    copy_reports(reports, folder)
    shipped = sorted(p.parent for p in (folder / 'eval').glob('*/report.json'))
    config = json.loads((folder / 'config.json').read_text())
    seeded = [fresh.get(r.get('data'), r) for r in config['metrics']['results'] if 'protocol_label' not in r]
    config['metrics']['results'] = seeded + report_results(shipped)
    (folder / 'config.json').write_text(json.dumps(config, indent=2) + '\n')
    return folder


def publish(runs: Path, key: str) -> Path:
    """lwta_zoo/weights/aistats_softmax_mnist.<tag>/ from RUNS/<key>."""
    run = runs / key
    model = load_pretrained(run / 'export', samples=1).eval()
    results = clean_results(model, key)
    reports = sorted(p.parent for p in (run / 'eval').glob('*/report.json'))
    results += report_results(reports)
    metrics = {'dataset': 'fashion_mnist', 'dataset_name': 'Fashion-MNIST', 'split': 'test', 'results': results}
    recipe = json.loads((run / 'export' / 'config.json').read_text())['recipe']
    published = timm.create_model(f'{ARCH}.{TAGS[key]}', samples=1)  # the tag's pretrained_cfg, same layers
    published.load_state_dict(model.state_dict())
    out = ROOT / 'lwta_zoo/weights' / f'{ARCH}.{TAGS[key]}'
    save_pretrained(published, out, recipe=recipe, metrics=metrics, provenance=training_provenance(run, key))
    copy_reports(reports, out)
    return out


def eval_commands(runs: Path, key: str) -> list:
    """The ``lwta-zoo eval`` commands that write RUNS/<key>/eval/<name>/ for every report of ``EVALS``."""
    out = runs.resolve()
    out = out.relative_to(ROOT) if out.is_relative_to(ROOT) else out
    return [f'lwta-zoo eval {ARCH}.{TAGS[key]} --data fashion_mnist {args} --threads 1 --no-progress '
            f'--output {out / key / "eval" / name}' for name, args in EVALS.items()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--runs', type=Path, default=ROOT / 'runs/fmnist')
    p.add_argument('--eval-commands', action='store_true', help='print the eval commands of the reports and stop')
    p.add_argument('--shipped', action='store_true',
                   help='update the shipped folders in place: clean rows measured again, reports from RUNS/<key>/eval')
    p.add_argument('keys', nargs='*', metavar='KEY',
                   help=f'which runs (default: all of {", ".join(TAGS)})')
    args = p.parse_args()
    unknown = set(args.keys) - set(TAGS)
    if unknown:
        p.error(f'unknown KEY {sorted(unknown)}; one of {list(TAGS)}')
    if args.eval_commands:
        print('\n'.join(c for key in args.keys or list(TAGS) for c in eval_commands(args.runs, key)))
        return
    torch.set_num_threads(1)
    for key in args.keys or list(TAGS):
        folder = republish(args.runs, key) if args.shipped else publish(args.runs, key)
        print(f'wrote {folder.relative_to(ROOT)}')


if __name__ == '__main__':
    main()
