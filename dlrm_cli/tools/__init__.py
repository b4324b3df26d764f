"""What ``dlrm benchmark``, ``dlrm report`` and ``dlrm doctor`` compute: speed on this machine, figures of
past runs, and whether this installation works.

May import: everything below the front ends (``config``, ``errors``, ``runtime``, ``data``, ``model``,
``store``, ``scoring``, ``training``).
"""
