"""Does SGD train the AISTATS paper's networks? A few hundred steps each, side by side.

The AISTATS paper trains its "conventional" networks with SGD (section 4) but gives no
learning rate. This check trains the Softmax network on Fashion-MNIST (real MNIST is not on
the machine this was written on) through the library's own trainer, for each optimiser,
method and weight initialisation asked for, and prints the running training accuracy and
the clean accuracy on the first ``--test-limit`` test images (one thread: the CPU is shared):

    python tools/aistats_sgd_check.py --steps 200

``--init`` re-initialises the model's weights before training: ``he`` (the networks' default,
He normal with zero biases), ``torch`` (torch's nn.Conv2d / nn.Linear default) or ``glorot``
(Keras' default, Verma & Swami's code).
"""
import argparse
import json
import tempfile
from pathlib import Path

import torch
import torch.nn as nn

from lwta_zoo.recipe import load_recipe
from lwta_zoo.train import Trainer

ROOT = Path(__file__).resolve().parents[1]
INITS = {
    'he': lambda w: nn.init.kaiming_normal_(w, nonlinearity='relu'),
    'glorot': nn.init.xavier_uniform_,
    'torch': None,  # reset_parameters()
}


def reinit(model: nn.Module, init: str) -> None:
    """Re-initialise every conv and linear layer of ``model`` in place (the optimiser keeps its tensors)."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            if INITS[init] is None:
                (nn.Conv2d if isinstance(m, nn.Conv2d) else nn.Linear).reset_parameters(m)
            else:
                INITS[init](m.weight)
                nn.init.zeros_(m.bias)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--recipe', default=str(ROOT / 'recipes/aistats_softmax_mnist.yaml'))
    parser.add_argument('--configs', nargs='+', default=['relu:sgd:0.05:he', 'relu:sgd:0.05:glorot',
                                                          'relu:sgd:0.05:torch', 'relu:sgd:0.01:he',
                                                          'lwta_ibp:sgd:0.05:he', 'lwta_ibp:adam:0.001:he'],
                        help='METHOD:OPTIMISER:LR:INIT each')
    parser.add_argument('--steps', type=int, default=300)
    parser.add_argument('--test-limit', type=int, default=1000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f'{"method":<10} {"optim":<6} {"lr":>7} {"init":<7} {"train acc (running)":>20} {"test acc":>9}')
    for config in args.configs:
        method, optim, lr, init = config.split(':')
        overrides = [f'model.args.method={method}', 'model.args.lwta_args={}' if method == 'relu' else '',
                     'data.name=fashion_mnist', f'data.test_limit={args.test_limit}', f'optim.name={optim}',
                     f'optim.lr={lr}', 'optim.momentum=0.9', 'optim.weight_decay=0', 'adversary.method=none',
                     'eval.limit=0', 'eval.every=0', 'train.threads=1', f'train.log_every={args.steps}']
        recipe = load_recipe(args.recipe, [o for o in overrides if o])
        with tempfile.TemporaryDirectory() as out:
            trainer = Trainer(recipe, out, max_steps=args.steps)
            reinit(trainer.model, init)
            final = trainer.fit()
            logged = [json.loads(line) for line in (Path(out) / 'metrics.jsonl').read_text().splitlines()]
        train_acc = next(r['train_acc'] for r in reversed(logged) if 'train_acc' in r)
        print(f'{method:<10} {optim:<6} {float(lr):>7g} {init:<7} {train_acc:>20.3f} {final["test_clean_acc"]:>9.3f}',
              flush=True)


if __name__ == '__main__':
    main()
