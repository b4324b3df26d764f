"""dlrm: train, evaluate, query and export a TorchRec DLRM that predicts ratings."""

import logging

# Importing TorchRec pulls in torch.fx, which logs a warning meant for torch's own developers.
logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)

__version__ = "0.3.0"

# Checkpoints record the format they were written in. This version writes format 3 (implicit-feedback bags
# in the catalog, bag tables in the model) and reads formats 1 and 2 too, converting them on load
# (``dlrm_cli.store.upgrade_meta``); it refuses any other.
CHECKPOINT_FORMAT = 3
READABLE_FORMATS = (1, 2, 3)


def __getattr__(name: str):
    """``from dlrm_cli import load``: the Python API, imported on first use (it imports torch and TorchRec)."""
    if name in ("load", "Model"):
        from dlrm_cli import api

        return getattr(api, name)
    raise AttributeError(f"module 'dlrm_cli' has no attribute {name!r}")
