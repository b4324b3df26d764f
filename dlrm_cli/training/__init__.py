"""A training run's life cycle: what was asked and whether the store allows it (``request``), the run itself
(``run``: set up, epochs, validation, checkpoints), what a run tells its user (``advice``), several processes
through torchrun (``launch``, ``distributed``), and Ctrl-C or SIGTERM handled between batches (``signals``).

May import: ``dlrm_cli.config``, ``dlrm_cli.errors``, ``dlrm_cli.runtime``, ``dlrm_cli.data``,
``dlrm_cli.model``, ``dlrm_cli.store``, ``dlrm_cli.scoring`` (validation metrics).
"""
