"""Stochastic layers of the zoo."""
from .lwta import LWTA, MODES, kl_divergence, lwta, lwta_kl, lwta_modules, set_mode, track_kl
