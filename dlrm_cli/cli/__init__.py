"""The front ends that print: the ``dlrm`` command (``main`` wires the subcommands in ``commands``, one module
each; ``options`` declares every option once; ``parsing`` turns option values into checked Python values;
``ui`` and ``tables`` print results and progress), and the torchrun worker (``worker``: ``python -m
dlrm_cli.cli.worker``).

May import: anything in ``dlrm_cli``. Nothing below imports this package. ``dlrm --help`` imports no torch:
commands import the core inside their functions.
"""
