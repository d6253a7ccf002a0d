"""One example forward that sees what convert cannot see by tracing: the channel count at each
ReLU module, and every functional ReLU call still made (one fx could not rewrite, or in code fx
could not trace), with its module path and line.

The calls are recorded by a ``TorchFunctionMode``, which every torch function and tensor method
passes through, traceable or not. The forward runs in eval mode without gradients, so it
changes no BatchNorm statistics.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Set, Tuple, Union

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

from .relu_calls import FUNCTIONS, RELU_LIKE, Call, call_site, zoo_code

ExampleInputs = Union[torch.Tensor, Tuple[torch.Tensor, ...]]


@dataclass
class Probe:
    """What one forward saw."""
    shapes: Dict[str, Set[Tuple[int, ...]]] = field(default_factory=dict)  # ReLU module path -> its input shapes
    calls: List[Call] = field(default_factory=list)  # functional ReLU calls made outside ReLU modules
    _running: List[Tuple[str, bool]] = field(default_factory=list)  # (path, calls to record) of each module
    # being run, innermost last


class _RecordReluCalls(TorchFunctionMode):
    def __init__(self, probe: Probe):
        super().__init__()
        self.probe = probe

    def __torch_function__(self, func, types, args=(), kwargs=None):
        function = FUNCTIONS.get(func)
        if function is not None and self.probe._running and self.probe._running[-1][1]:
            call = Call(self.probe._running[-1][0], function.label, call_site())
            if call not in self.probe.calls:
                self.probe.calls.append(call)
        return func(*args, **(kwargs or {}))


def probe(model: nn.Module, example_inputs: ExampleInputs) -> Probe:
    """Run ``model`` once on ``example_inputs`` (a tensor, or a tuple of its positional arguments)."""
    seen = Probe()
    hooks = []
    for path, module in model.named_modules():
        relu = isinstance(module, RELU_LIKE)

        def enter(m, args, path=path, relu=relu, record=not (relu or zoo_code(type(module)))):
            seen._running.append((path, record))
            if relu and args and isinstance(args[0], torch.Tensor):
                seen.shapes.setdefault(path, set()).add(tuple(args[0].shape))

        def leave(m, args, output):
            seen._running.pop()
        hooks += [module.register_forward_pre_hook(enter), module.register_forward_hook(leave, always_call=True)]
    flags = [(m, m.training) for m in model.modules()]
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    try:
        model.eval()
        with torch.no_grad(), _RecordReluCalls(seen):
            model(*inputs)
    finally:
        for hook in hooks:
            hook.remove()
        for m, flag in flags:
            m.training = flag
    return seen
