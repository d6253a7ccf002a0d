"""Rewrite a model's functional ReLU calls (``F.relu``, ``x.relu_()``...) into ReLU modules with torch.fx.

``convert`` then swaps these modules for LWTA like any other. The model keeps its class: only
the forward of a module that makes such calls (its *owner*) is replaced, on that instance, by
fx's rewrite of it, which calls a new child module named after the call (``relu_call0``...).

Finding the calls: each subtree is traced whole (cheap, one trace); where fx cannot trace one
(data-dependent control flow), its own forward is traced alone and its children are looked at
one by one, so one untraceable module hides only the calls in its own code. An owner's forward
is traced in training and in eval mode (fx bakes ``self.training`` in) and the rewritten forward
picks the graph by the mode. Arguments with defaults are specialised to them (fx asserts so at
run time). timm's untraceable helpers (``register_notrace_function``) stay opaque calls.
"""
from __future__ import annotations

import inspect
import types
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, NamedTuple, Optional, Tuple

import torch.fx as fx
import torch.nn as nn
from timm.layers import get_notrace_functions

from .relu_calls import FUNCTIONS, METHODS, RELU_LIKE, Call, ReluFunction, call_site, zoo_code

Site = Tuple[str, int]  # (file:line, occurrence at that line in one trace): a call, in both modes' graphs


def relu_function(node: fx.Node) -> Optional[ReluFunction]:
    """The functional ReLU an fx node calls, if it calls one."""
    if node.op == 'call_function':
        return FUNCTIONS.get(node.target)
    return FUNCTIONS[METHODS[node.target]] if node.op == 'call_method' and node.target in METHODS else None


def _opaque(module: nn.Module) -> bool:
    """Modules known to make no functional ReLU call: ReLU modules themselves and the zoo's own layers."""
    return isinstance(module, RELU_LIKE) or type(module).__module__.startswith('lwta_zoo.layers')


def _builtin(module: nn.Module) -> bool:
    """torch.nn's own modules other than Sequential: fx does not trace into them, nor does convert."""
    return fx.Tracer().is_leaf_module(module, '') and not isinstance(module, nn.Sequential)


class _Tracer(fx.Tracer):
    """fx tracer that records where each functional ReLU was called and keeps timm's untraceable
    helpers as calls. ``own_forward``: every child module is a leaf (trace the root's code only)."""

    def __init__(self, own_forward: bool = False):
        super().__init__(autowrap_functions=tuple(f for f in get_notrace_functions() if callable(f)))
        self.own_forward = own_forward

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return self.own_forward or _opaque(m) or super().is_leaf_module(m, module_qualified_name)

    def create_node(self, kind, target, args, kwargs, name=None, type_expr=None) -> fx.Node:
        node = super().create_node(kind, target, args, kwargs, name, type_expr)
        if relu_function(node):
            node.meta['relu_call_site'] = call_site()
        return node


@contextmanager
def _training(module: nn.Module, mode: bool) -> Iterator[None]:
    flags = [(m, m.training) for m in module.modules()]
    module.train(mode)
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def _specialised_defaults(module: nn.Module) -> Dict[str, object]:
    """forward's arguments with a None or constant default, which the trace takes as given."""
    return {name: p.default for name, p in inspect.signature(type(module).forward).parameters.items()
            if p.default is None or type(p.default) in (bool, int, float, str)}


def _trace(module: nn.Module, own_forward: bool) -> List[fx.Graph]:
    """``module``'s graphs in training and in eval mode."""
    if 'forward' in vars(module):
        raise TypeError('its forward is set on the instance')
    graphs = []
    for mode in (True, False):
        with _training(module, mode):
            graphs.append(_Tracer(own_forward).trace(module, concrete_args=_specialised_defaults(module)))
    return graphs


def _owner(node: fx.Node, root: nn.Module, path: str) -> Tuple[str, type]:
    """The path and type of the module whose code made the call ``node`` records."""
    stack = node.meta.get('nn_module_stack') or {}
    inner, owner_type = next(reversed(stack.values())) if stack else ('', type(root))
    return '.'.join(p for p in (path, inner) if p), owner_type


def _calls(graphs: List[fx.Graph], root: nn.Module, path: str) -> List[Call]:
    """The functional ReLU calls in ``graphs`` (traces of ``root``, at ``path``), but those in the zoo's code."""
    calls = {Call(owner, relu_function(n).label, n.meta['relu_call_site'])
             for g in graphs for n in g.nodes if relu_function(n)
             for owner, owner_type in [_owner(n, root, path)] if not zoo_code(owner_type)}
    return sorted(calls, key=lambda c: (c.owner, c.where))


def _find(module: nn.Module, path: str, calls: List[Call], untraceable: Dict[str, str]) -> None:
    """Add the functional ReLU calls under ``module`` to ``calls``, the modules whose code fx
    could not read to ``untraceable`` (path: reason)."""
    if _opaque(module):
        return
    if not (_builtin(module) or zoo_code(type(module)) or getattr(module.forward, 'lwta_rewritten', False)):
        try:
            calls.extend(_calls(_trace(module, own_forward=False), module, path))
            return
        except Exception:
            pass
        try:
            calls.extend(_calls(_trace(module, own_forward=True), module, path))
        except Exception as err:
            untraceable[path] = f'{type(module).__name__}: {_first_line(err)}'
    for name, child in module.named_children():
        _find(child, f'{path}.{name}' if path else name, calls, untraceable)


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


@dataclass
class Rewrite:
    """What ``rewrite_functional_relus`` did to a model, and how to take it back."""
    sites: Dict[str, Call] = field(default_factory=dict)  # new module path -> the call it replaces
    not_rewritten: List[Call] = field(default_factory=list)  # calls fx found but could not rewrite
    untraceable: Dict[str, str] = field(default_factory=dict)  # module path -> why fx could not read it
    _owners: List[Tuple[nn.Module, List[str]]] = field(default_factory=list)

    def undo(self) -> None:
        """Give each rewritten module back its own forward and drop the modules added."""
        for owner, names in self._owners:
            del owner.forward
            for name in names:
                delattr(owner, name)
        self.sites.clear()
        self._owners.clear()


def _sites(graph: fx.Graph) -> Iterator[Tuple[Site, fx.Node]]:
    seen: Dict[str, int] = {}
    for node in list(graph.nodes):
        if relu_function(node):
            where = node.meta['relu_call_site']
            seen[where] = seen.get(where, -1) + 1
            yield (where, seen[where]), node


def _constant_arguments(node: fx.Node) -> bool:
    """Whether every argument but the input is a constant (a module can be built from them)."""
    computed: List[fx.Node] = []
    fx.node.map_arg((node.args[1:], {k: v for k, v in node.kwargs.items() if k != 'input'}), computed.append)
    return not computed


class NewModule(NamedTuple):
    name: str
    module: nn.Module
    call: Call


def _new_modules(owner: nn.Module, path: str, graphs: List[fx.Graph]) -> Dict[Site, NewModule]:
    """A ReLU module per rewritable call site, under a free name made from the function and its order."""
    modules: Dict[Site, NewModule] = {}
    for graph in graphs:
        for site, node in _sites(graph):
            if site in modules or not _constant_arguments(node):
                continue
            function = relu_function(node)
            stem, i = function.label.split('.')[-1].rstrip('_'), len(modules)
            while hasattr(owner, f'{stem}_call{i}') or any(m.name == f'{stem}_call{i}' for m in modules.values()):
                i += 1
            modules[site] = NewModule(f'{stem}_call{i}', function.to_module(*node.args, **node.kwargs),
                                      Call(path, function.label, site[0]))
    return modules


def _rewrite_graph(graph: fx.Graph, modules: Dict[Site, NewModule]) -> None:
    """Replace each call with a site in ``modules`` by a call of its module; after an in-place
    call, later uses of its input read the module's output."""
    order = {node: i for i, node in enumerate(graph.nodes)}
    for site, node in _sites(graph):
        if site not in modules:
            continue
        name, module, _ = modules[site]
        source = node.args[0] if node.args else node.kwargs['input']
        with graph.inserting_after(node):
            new = graph.call_module(name, (source,))
        node.replace_all_uses_with(new)
        if module.inplace:
            for user in list(source.users):
                if user is not new and order.get(user, -1) > order[node]:
                    user.replace_input_with(source, new)
        graph.erase_node(node)
    graph.lint()


def _install(owner: nn.Module, graphs: List[fx.Graph]) -> None:
    """Give ``owner`` a forward that runs the training or the eval graph by its mode."""
    train_forward, eval_forward = (type(fx.GraphModule(owner, g, type(owner).__name__)).forward for g in graphs)

    def forward(self, *args, **kwargs):
        return (train_forward if self.training else eval_forward)(self, *args, **kwargs)
    forward.lwta_rewritten = True
    owner.forward = types.MethodType(forward, owner)


def rewrite_functional_relus(model: nn.Module) -> Rewrite:
    """Turn each functional ReLU call fx finds in ``model`` into a ReLU module, in place."""
    calls: List[Call] = []
    result = Rewrite()
    _find(model, '', calls, result.untraceable)
    by_owner: Dict[str, List[Call]] = {}
    for call in calls:
        by_owner.setdefault(call.owner, []).append(call)
    for path, owner_calls in by_owner.items():
        owner = model.get_submodule(path)
        try:
            graphs = _trace(owner, own_forward=True)
        except Exception:
            result.not_rewritten.extend(owner_calls)
            continue
        modules = _new_modules(owner, path, graphs)
        result.not_rewritten.extend(c for c in owner_calls if c not in {m.call for m in modules.values()})
        if not modules:
            continue
        for new in modules.values():
            owner.add_module(new.name, new.module)
            result.sites[f'{path}.{new.name}' if path else new.name] = new.call
        for graph in graphs:
            _rewrite_graph(graph, modules)
        _install(owner, graphs)
        result._owners.append((owner, [new.name for new in modules.values()]))
    return result
