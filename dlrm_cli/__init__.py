"""dlrm: train, evaluate, query and export a TorchRec DLRM that predicts ratings."""

import logging

# Importing TorchRec pulls in torch.fx, which logs a warning meant for torch's own developers.
logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)

__version__ = "0.4.0"

# Checkpoints record the format they were written in. This version writes format 6 (the training items of
# each user and export's check pairs kept in ``known.pt``, so a checkpoint serves without its data) and reads
# formats 1 to 5 too, converting them on load (``dlrm_cli.store.checkpoints.upgrade_meta``); it refuses any
# other. Formats 1 to 5 read their training data where recommending or exporting needs it.
CHECKPOINT_FORMAT = 6
READABLE_FORMATS = (1, 2, 3, 4, 5, 6)


def __getattr__(name: str):
    """``from dlrm_cli import load, train``: the Python API, imported on first use (it imports torch and
    TorchRec)."""
    if name in ("load", "train", "Model"):
        from dlrm_cli import api

        return getattr(api, name)
    raise AttributeError(f"module 'dlrm_cli' has no attribute {name!r}")
