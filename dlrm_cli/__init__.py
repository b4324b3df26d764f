"""dlrm: train, evaluate, query and export a TorchRec DLRM that predicts ratings."""

__version__ = "0.1.0"

# Checkpoints record the format they were written in; a reader refuses any other.
CHECKPOINT_FORMAT = 1
