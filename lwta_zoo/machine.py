"""What a measurement ran on: library versions and the machine, recorded by eval reports, training logs
and the GPU check, so that every published figure says where it was measured."""
from __future__ import annotations

import os
import platform
import sys
from typing import Any, Dict, Optional

import numpy as np
import torch


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what ``platform`` knows ('x86_64' at worst)."""
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu() -> Optional[Dict[str, Any]]:
    """The first CUDA device's name, memory and capability (None without one)."""
    if not torch.cuda.is_available():
        return None
    p = torch.cuda.get_device_properties(0)
    return {'name': p.name, 'memory_gib': round(p.total_memory / 2 ** 30, 1), 'capability': f'{p.major}.{p.minor}'}


def native_bf16(device: torch.device) -> bool:
    """Whether bfloat16 autocast runs natively: on a CPU, oneDNN needs AVX512-BF16 or AMX (without
    them it emulates bf16, about 10x slower than float32 on an AVX2 EPYC); CUDA devices since Ampere."""
    if device.type == 'cuda':
        return torch.cuda.is_bf16_supported()
    if device.type != 'cpu':
        return True
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


def environment() -> Dict[str, Any]:
    """Versions of the libraries a result depends on, and the machine with the threads torch uses now."""
    import pyautoattack
    import timm

    from . import __version__
    return {
        'versions': {'python': sys.version.split()[0], 'torch': torch.__version__, 'timm': timm.__version__,
                     'pyautoattack': pyautoattack.__version__, 'numpy': np.__version__, 'lwta_zoo': __version__},
        'machine': {'platform': platform.platform(), 'processor': cpu_model(), 'cpus': os.cpu_count(),
                    'torch_threads': torch.get_num_threads(), 'cpu_bf16': native_bf16(torch.device('cpu')),
                    'cuda': gpu()},
    }
