"""dlrm: train, evaluate, query and export a TorchRec DLRM that predicts ratings."""

import logging

# Importing TorchRec pulls in torch.fx, which logs a warning meant for torch's own developers.
logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)

__version__ = "0.1.0"

# Checkpoints record the format they were written in; a reader refuses any other.
CHECKPOINT_FORMAT = 1
