"""Stochastic layers of the zoo."""
from .lwta import LWTA, MODES, kl_divergence, lwta, lwta_kl, lwta_modules, set_mode, track_kl
from .ibp import IBPConv2d, IBPLinear, IBPMask, format_keep_fraction, ibp_keep_fraction, ibp_layers, set_ibp_mode
