"""jaxlstm: PyTorch's ``nn.LSTM``, ``nn.LSTMCell`` and BiLSTM in JAX/Flax — same arguments,
same shapes, same numbers."""

from jaxlstm import functional
from jaxlstm.config import LSTMCellConfig, LSTMConfig
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

_SUBMODULES = ("linen", "data", "checkpoint", "formats", "files", "testing", "porting")


def __getattr__(name: str):
    """``jaxlstm.linen``, ``jaxlstm.testing``, ... imported on first use."""
    if name in _SUBMODULES:
        import importlib

        return importlib.import_module(f"jaxlstm.{name}")
    raise AttributeError(f"module 'jaxlstm' has no attribute {name!r}")


__all__ = [
    "LSTM",
    "BiLSTM",
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
