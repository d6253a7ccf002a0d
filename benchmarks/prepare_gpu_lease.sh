#!/usr/bin/env bash
# Here, before a GPU lease: what benchmarks/gpu_check.py needs on the GPU machine, in two ignored folders
# that the lease carries (64 MiB in all, with the repo): .gpu_data (a packed part of CIFAR-10) and .whl
# (what the machine's image lacks: timm at the version this repo needs, and pyautoattack without its 45 MB of
# example models; both pure Python, so Python imports them from the wheel files themselves).
# Then, with the device tool, one call (timeout 590 s):
#   carry: [".gpu_data", ".whl"]
#   command: PYTHONPATH=$(printf '%s:' $PWD/.whl/*.whl)$PWD PYTHONUNBUFFERED=1 python3 -m benchmarks.gpu_check run $OUT --budget-s 500
set -euo pipefail
cd "$(dirname "$0")/.."
shared=${1:-../shared/data}
python -m benchmarks.gpu_check pack --data "$shared" --output .gpu_data --train-images "${TRAIN_IMAGES:-20000}"
rm -rf .whl && mkdir .whl
python -m pip download -q --no-deps --only-binary=:all: -d .whl timm==1.0.31 pyautoattack==0.2.0
python - <<'PY'
import glob, os, zipfile
src = glob.glob('.whl/pyautoattack-*.whl')[0]
with zipfile.ZipFile(src) as z, zipfile.ZipFile(src + '.tmp', 'w', zipfile.ZIP_DEFLATED) as out:
    for item in z.infolist():
        if '/examples/' not in item.filename:
            out.writestr(item, z.read(item))
os.replace(src + '.tmp', src)
PY
total=$(( $(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1) + $(du -sb .gpu_data .whl | awk '{s += $1} END {print s}') ))
echo "the lease carries $(( total / 1048576 )) MiB (at most 64)"
[ "$total" -lt $(( 64 * 1048576 )) ] || { echo "too large: set TRAIN_IMAGES lower" >&2; exit 1; }
