#!/usr/bin/env bash
# A non-editable install works: build the wheel, install it into a fresh virtual environment
# (the running interpreter's site-packages, a venv's where one is active, lend it torch and the other
# dependencies through a .pth file, after its own: no large download), then, from a folder outside the checkout and with a fresh home folder, load
# a shipped model, predict with L=5 samples and take one training step through the fused CPU
# LWTA kernel. Checks that the package data (kernel source, weights, test-data npz) is in the
# wheel and that the kernel's build cache lands in the user's cache, not in site-packages; then
# writes the leaderboard site from the installed copy (its templates, CSS and script are package files).
#
#   tools/check_wheel.sh [WORK_DIR]     (default: a new temporary folder, removed afterwards)
set -euo pipefail
checkout="$(cd "$(dirname "$0")/.." && pwd)"
work="${1:-$(mktemp -d)}"
[ -n "${1:-}" ] || trap 'rm -rf "$work"' EXIT
mkdir -p "$work/home" "$work/run"

pip wheel "$checkout" -w "$work/wheel" --no-deps -q
wheel=$(ls "$work"/wheel/lwta_zoo-*.whl)
python - "$wheel" <<'EOF'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
for needed in ('lwta_zoo/kernels/lwta_cpu.c', 'lwta_zoo/data/fashion_mnist_test_500.npz',
               'lwta_zoo/weights/aistats_softmax_mnist.lwta_u2_fmnist_pgd/model.safetensors',
               'lwta_zoo/weights/aistats_softmax_mnist.lwta_u2_fmnist_pgd/config.json',
               'lwta_zoo/leaderboard/templates/index.html', 'lwta_zoo/leaderboard/static/sort.js'):
    assert needed in names, f'{needed} is not in {sys.argv[1]}'
print(f'wheel: {len(names)} files, package data present')
EOF

python -m venv "$work/venv"
lend="$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
"$work/venv/bin/python" -c 'import sys, sysconfig; open(sysconfig.get_paths()["purelib"] + "/_lent.pth", "w").write(sys.argv[1] + "\n")' "$lend"
"$work/venv/bin/python" -m pip install -q --no-deps "$wheel"

cd "$work/run"  # not the checkout: the import must find the installed copy
env -u PYTHONPATH -u LWTA_ZOO_CACHE -u LWTA_ZOO_NO_KERNEL HOME="$work/home" \
    "$work/venv/bin/python" - "$work/venv" "$work/home" <<'EOF'
import sys
from pathlib import Path

import timm
import torch
import torch.nn.functional as F

import lwta_zoo
from lwta_zoo import kl_divergence
from lwta_zoo.data import read_npz
from lwta_zoo.kernels import cpu_library
from lwta_zoo.layers import lwta_fast

venv, home = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve()
package = Path(lwta_zoo.__file__).resolve().parent
assert venv in package.parents, f'lwta_zoo imported from {package}, not from the wheel in {venv}'

model = timm.create_model('aistats_softmax_mnist.lwta_u2_fmnist_pgd', pretrained=True, samples=5)
images, labels = read_npz(package / 'data' / 'fashion_mnist_test_500.npz', 1)
x, y = images[:64].float() / 255, labels[:64]
assert cpu_library() is not None and lwta_fast.supports(x.new_empty(2, 64), 2), 'the fused CPU kernel is not in use'
built = sorted((home / '.cache' / 'lwta_zoo').glob('lwta_cpu-*.so'))
assert built, f'no kernel build in {home}/.cache/lwta_zoo'
assert not list(package.rglob('*.so')), 'the kernel was built inside site-packages'

with torch.no_grad():
    acc = (model.eval()(x).argmax(1) == y).float().mean().item()
assert acc > 0.5, f'L=5 accuracy {acc} on 64 shipped Fashion-MNIST test images: the weights did not load'

model.train()
opt = torch.optim.SGD(model.parameters(), lr=0.01)
before = [p.detach().clone() for p in model.parameters()]
loss = F.cross_entropy(model(x), y) + kl_divergence(model) / 60_000
loss.backward()
opt.step()
assert loss.isfinite() and any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
print(f'installed {package}: L=5 accuracy {acc:.2f} on 64 images, one training step (loss {loss.item():.3f}), '
      f'kernel built in {built[0].parent}')
EOF

env -u PYTHONPATH HOME="$work/home" "$work/venv/bin/lwta-zoo" leaderboard --output "$work/run/site"
for file in index.html style.css sort.js; do [ -s "$work/run/site/$file" ] || { echo "no $file in the site"; exit 1; }; done
