"""Fused LWTA kernels, loaded at first use; ``None`` when unavailable (callers then run eager PyTorch).

CPU: ``cpu_library()`` compiles ``lwta_cpu.c`` with the system C compiler (gcc or clang
with OpenMP; about 2 s) into ``$LWTA_ZOO_CACHE`` (default ``~/.cache/lwta_zoo``), keyed by
the source, the flags, the compiler and the CPU, and loads it with ctypes: no torch
headers, no Python ABI. Without a compiler, or when the build fails, it warns once and
returns ``None``.

CUDA: ``triton_kernels()`` imports ``lwta_triton`` (Triton kernels, the same noise and
results), ``None`` where Triton is not installed; it is imported only for CUDA tensors,
so CPU users never need Triton.

``LWTA_ZOO_NO_KERNEL=1`` turns both off.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path
from types import ModuleType
from typing import List, Optional

SOURCE = Path(__file__).with_name('lwta_cpu.c')
# -ffast-math lets gcc vectorise expf/logf (glibc's libmvec). It is given to the compile
# step only: linked with it, gcc would add crtfastmath.o, which flushes denormals to zero
# for the whole process at load time.
COMPILE_FLAGS = ['-O3', '-march=native', '-ffast-math', '-fopenmp', '-fPIC', '-c']
LINK_FLAGS = ['-shared', '-fopenmp', '-lm']

_i64, _u64, _int, _float = ctypes.c_int64, ctypes.c_uint64, ctypes.c_int, ctypes.c_float
_double = ctypes.c_double
_ptrs = [ctypes.c_void_p]
SIGNATURES = {  # name: (restype, argtypes); pointers are passed as addresses (c_void_p), None for NULL
    # geometry (N, G, U, S) and layout (1: units adjacent in memory, +2: bfloat16) follow the pointers
    'lwta_sample': (None, _ptrs * 5 + [_i64] * 4 + [_int, _u64, _int]),
    'lwta_sample_backward': (None, _ptrs * 6 + [_i64] * 4 + [_int, _int]),
    'lwta_relaxed': (_double, _ptrs * 5 + [_i64] * 4 + [_int, _u64, _float, _int, _int, _int]),
    'lwta_relaxed_backward': (None, _ptrs * 10 + [_i64] * 4 + [_int, _u64, _float, _int, _float, _int]),
    # BatchNorm's passes over (N, C, S)
    'lwta_channel_stats': (None, _ptrs * 2 + [_i64] * 3 + [_int, _int]),
    'lwta_channel_axpb': (None, _ptrs * 6 + [_i64] * 3 + [_int, _int]),
    'lwta_uniforms': (None, _ptrs + [_i64] * 3 + [_u64, _i64]),
    'lwta_max_units': (_int, []),
}


def _cpu_id() -> str:
    """The CPU model, so that a cache shared between machines never runs -march=native code elsewhere."""
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith(('model name', 'flags')):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _run(cmd: List[str]) -> None:
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f'{" ".join(cmd)} failed:\n{out.stderr[-2000:]}')


def _build(cc: str, target: Path) -> None:
    """Compile and link into ``target`` atomically (concurrent first uses are safe)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        obj, lib = Path(tmp) / 'lwta_cpu.o', Path(tmp) / target.name
        _run([cc, *COMPILE_FLAGS, str(SOURCE), '-o', str(obj)])
        _run([cc, str(obj), *LINK_FLAGS, '-o', str(lib)])
        os.replace(lib, target)


def _turned_off() -> bool:
    return os.environ.get('LWTA_ZOO_NO_KERNEL', '') not in ('', '0')


@functools.lru_cache(maxsize=None)
def cpu_library() -> Optional[ctypes.CDLL]:
    """The compiled CPU kernels, building them on first use; ``None`` if they cannot be had."""
    if _turned_off():
        return None
    cc = os.environ.get('CC') or shutil.which('gcc') or shutil.which('cc') or shutil.which('clang')
    if cc is None:
        warnings.warn('lwta_zoo: no C compiler found; LWTA runs on the slower eager PyTorch path')
        return None
    key = hashlib.sha256('\n'.join([SOURCE.read_text(), *COMPILE_FLAGS, *LINK_FLAGS, cc, _cpu_id()]).encode())
    cache = Path(os.environ.get('LWTA_ZOO_CACHE', Path.home() / '.cache' / 'lwta_zoo'))
    target = cache / f'lwta_cpu-{key.hexdigest()[:16]}.so'
    try:
        if not target.exists():
            _build(cc, target)
        lib = ctypes.CDLL(str(target))
    except (OSError, RuntimeError) as e:
        warnings.warn(f'lwta_zoo: could not build the LWTA CPU kernel, using eager PyTorch instead: {e}')
        return None
    for name, (restype, argtypes) in SIGNATURES.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    return lib


@functools.lru_cache(maxsize=None)
def triton_kernels() -> Optional[ModuleType]:
    """The Triton kernels for CUDA tensors (``lwta_triton``); ``None`` without Triton."""
    if _turned_off():
        return None
    try:
        from . import lwta_triton
    except ImportError:
        return None
    return lwta_triton
