"""The DLRM itself, from TorchRec's parts: the model and its one computation (``dlrm``), the optimizers it
trains with (``optim``), and its int8 twin (``int8``). The loss lives in ``dlrm_cli.training``, so that
scoring and export use the bare model.

May import: ``dlrm_cli.config``, ``dlrm_cli.errors``, ``dlrm_cli.data`` (the catalog a batch comes from).
"""
