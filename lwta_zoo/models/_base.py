"""What every model of the zoo shares: activation choice, L-sample forward, timm builder."""
from __future__ import annotations

from functools import partial
from typing import Any, Callable, Dict, Optional, Sequence, Set, Type, Union

import timm
import torch
import torch.nn as nn
from timm.layers import SelectAdaptivePool2d, get_device_dtype
from timm.models import build_model_with_cfg

from ..hub import resolve_pretrained
from ..layers.ibp import IBPMask
from ..layers.lwta import LWTA, track_kl
from ..sampling import check_max_batch, check_samples, sample_average

ACTIVATIONS = ('relu', 'lwta')
HF_ORG = 'lwta-zoo'  # the Hugging Face organisation that hosts the zoo's weights
DeviceLike = Union[str, torch.device]
BEHAVIOUR_ARGS = ('act', 'lwta_args', 'method', 'U')  # build arguments that leave no trace in a state_dict


def make_act_layer(act: str = 'relu', lwta_args: Optional[Dict[str, Any]] = None) -> Callable[..., nn.Module]:
    """An ``act_layer`` factory from serialisable settings: 'relu' or 'lwta' with LWTA kwargs."""
    if act == 'relu':
        if lwta_args:
            raise ValueError(f'lwta_args {lwta_args} given for a ReLU model')
        return nn.ReLU
    if act == 'lwta':
        LWTA(**(lwta_args or {}))  # validate U, tau, mode now, before any layer is built
        return partial(LWTA, **(lwta_args or {}))
    raise ValueError(f'act must be one of {ACTIVATIONS}, got {act!r}')


class Normalize(nn.Module):
    """Per-channel (x - mean) / std inside the model, so that inputs stay in [0, 1]."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], device: Optional[DeviceLike] = None,
                 dtype: Optional[torch.dtype] = None):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.register_buffer('mean', torch.tensor(mean, **dd).view(1, -1, 1, 1), persistent=False)
        self.register_buffer('std', torch.tensor(std, **dd).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class SampledClassifier(nn.Module):
    """Base of the zoo's classifiers: in eval mode ``forward`` averages L samples in one batch.

    Subclasses implement timm's ``forward_features`` / ``forward_head``, take timm's factory
    arguments ``device`` and ``dtype`` (every parameter and buffer is created there) and
    define ``group_matcher``.
    """

    num_samples: int = 1
    sample_average: str = 'logits'
    max_batch: Optional[int] = None  # rows per folded forward; None: lwta_zoo.sampling.MAX_BATCH
    has_ibp: bool = False  # subclasses with IBP layers set it: each of the L samples then draws its own masks

    def init_head(self, num_features: int, num_classes: int, global_pool: str,
                  pre_logits: Optional[nn.Module] = None, hidden: Optional[int] = None) -> None:
        """timm's head: global pool -> optional pre-logits layer -> classifier ``fc``, on the device
        and in the dtype of the layers built before it."""
        self.num_features, self.head_hidden_size = num_features, hidden or num_features
        self.pre_logits = pre_logits or nn.Identity()
        self.reset_classifier(num_classes, global_pool)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """A fresh classifier for ``num_classes`` (0: none) on the model's device and dtype, in its
        train/eval mode; ``global_pool`` ('' for unpooled features) replaces the pooling if given."""
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=bool(global_pool))
        dd = get_device_dtype(self)
        self.fc = nn.Linear(self.head_hidden_size, num_classes, **dd) if num_classes else nn.Identity()
        self.global_pool.train(self.training)
        self.fc.train(self.training)

    def no_weight_decay(self) -> Set[str]:
        """timm's optimizer factory exempts these from weight decay: the IBP's variational
        parameters (keep-probability logits and stick posteriors), which the KL regularises."""
        return {f'{name}.*' for name, m in self.named_modules() if isinstance(m, IBPMask)}

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        if self.global_pool.is_identity():  # global_pool='': unpooled features, as in timm
            return x
        x = self.pre_logits(x)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        L = 1 if self.training else self.num_samples
        if L == 1 or not self.has_ibp:
            return sample_average(self.forward_single, x, L, self.sample_average, self.max_batch)
        # IBP draws one architecture z per forward: run the folded copies one by one.
        return sample_average(lambda xs: torch.cat([self.forward_single(c) for c in xs.split(len(x))]), x, L,
                              self.sample_average, self.max_batch)

    def forward_single(self, x: torch.Tensor) -> torch.Tensor:
        """One draw of the stochastic network."""
        return self.forward_head(self.forward_features(x))


def _check_input(model: nn.Module, x: torch.Tensor, in_chans: int) -> None:
    if isinstance(x, torch.fx.Proxy):  # traced by torch.fx (fuse_batchnorm_lwta): no shape to check
        return
    if x.dim() != 4 or x.shape[1] != in_chans:
        raise ValueError(f'{type(model).__name__} expects images (N, {in_chans}, H, W), got {tuple(x.shape)}')


def build(
    model_cls: Type[SampledClassifier],
    variant: str,
    pretrained: bool = False,
    samples: int = 1,
    sample_average: str = 'logits',
    max_batch: Optional[int] = None,
    **kwargs,
) -> SampledClassifier:
    """timm's ``build_model_with_cfg`` plus the zoo's extras: checked weights, L samples, KL tracking."""
    check_samples(samples, sample_average)
    check_max_batch(max_batch)
    kwargs.setdefault('feature_cfg', dict(out_indices=(0, 1, 2)))
    if pretrained:  # a checked local safetensors file: mirror folder, HF cache or Hub (see lwta_zoo.hub)
        kwargs = resolve_pretrained(variant, kwargs)
    model = build_model_with_cfg(model_cls, variant, pretrained, **kwargs)
    model.num_samples, model.sample_average, model.max_batch = samples, sample_average, max_batch
    # Weights alone cannot tell these apart: keep them for export (timm.create_model adds the caller's).
    model._model_args = {k: kwargs[k] for k in BEHAVIOUR_ARGS if k in kwargs}
    return track_kl(model)


def cfg(num_classes: int = 10, input_size=(3, 32, 32), pool_size=(8, 8), **kwargs) -> Dict[str, Any]:
    """A pretrained_cfg for the zoo: inputs in [0, 1], any normalisation inside the model."""
    chans = input_size[0]
    return {
        'num_classes': num_classes, 'input_size': input_size, 'pool_size': pool_size,
        'crop_pct': 1.0, 'interpolation': 'bilinear',
        'mean': (0.0,) * chans, 'std': (1.0,) * chans,
        'first_conv': 'conv1', 'classifier': 'fc', 'license': 'mit', **kwargs,
    }


def zoo_model_names() -> list:
    """Names of every model this package registered in timm's registry."""
    return [n for n in timm.list_models() if timm.models.model_entrypoint(n).__module__.startswith('lwta_zoo.')]
