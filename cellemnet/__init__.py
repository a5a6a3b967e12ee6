"""CellEMNet: curate EM data, pretrain encoders with self-supervision, evaluate them on segmentation benchmarks.

Importing this package (or any curation module) never imports torch, so curation commands start fast.
"""
from cellemnet.constants import EM_MEAN, EM_STD
from cellemnet.errors import CellEMNetError, ConfigError, InputError

__version__ = "0.1.0"
__all__ = ["EM_MEAN", "EM_STD", "CellEMNetError", "ConfigError", "InputError", "__version__"]
