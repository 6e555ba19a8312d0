"""jaxlstm: PyTorch's ``nn.LSTM``, ``nn.LSTMCell`` and BiLSTM in JAX/Flax — same arguments,
same shapes, same numbers.

The public submodules that a bare ``import jaxlstm`` does not load (``linen``, ``data``,
``checkpoint``, ``files``, ``formats``, ``testing``) are imported on first attribute access:
``jaxlstm.linen.LSTM(...)`` works after ``import jaxlstm`` alone, which stays quick and never
imports torch or the optional libraries those submodules use.
"""

import importlib

from jaxlstm import functional
from jaxlstm.config import LSTMCellConfig, LSTMConfig
from jaxlstm.gates import HardSigmoid
from jaxlstm.nnx import LSTM, BiLSTM, LSTMCell
from jaxlstm.porting import (
    find_lstms,
    from_checkpoint,
    from_torch,
    infer_config,
    load_params,
    to_torch,
    to_torch_module,
)

__version__ = "0.1.0"

# Public submodules loaded lazily, on first use of ``jaxlstm.<name>``.
_LAZY_SUBMODULES = (
    "checkpoint",
    "data",
    "files",
    "formats",
    "linen",
    "reference",
    "testing",
)

__all__ = [
    "LSTM",
    "BiLSTM",
    "HardSigmoid",
    "LSTMCell",
    "LSTMConfig",
    "LSTMCellConfig",
    "from_torch",
    "from_checkpoint",
    "find_lstms",
    "to_torch",
    "to_torch_module",
    "load_params",
    "infer_config",
    "functional",
]


def __getattr__(name: str):
    if name in _LAZY_SUBMODULES:
        # import_module also binds the submodule as an attribute of this package.
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_SUBMODULES))
