"""Stochastic layers of the zoo."""
from .batchnorm_lwta import BatchNormLWTA2d, fuse_batchnorm_lwta, unfuse_batchnorm_lwta
from .ibp import IBPConv2d, IBPLinear, IBPMask, format_keep_fraction, ibp_keep_fraction, ibp_layers
from .lwta import LWTA, MODES, lwta, lwta_kl, lwta_modules, lwta_relaxed_kl, track_kl
from .stochastic import kl_divergence, set_mode, stochastic_modules
