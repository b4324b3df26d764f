"""The checkpoint store: one folder per checkpoint, written atomically and checked on read (``checkpoints``);
what a checkpoint's record must hold, and the metric that chose its epoch (``record``); listing, removing and
pruning them (``manage``); and a model rebuilt from a checkpoint alone (``loading``).

May import: ``dlrm_cli.config``, ``dlrm_cli.errors``, ``dlrm_cli.runtime``, ``dlrm_cli.data``,
``dlrm_cli.model``.
"""
