"""The process around the model: how many CPU threads torch uses (``threads``), how the C allocator hands
memory back (``memory``), third-party log noise silenced around one call (``quiet``), files written outside
the checkpoint store (``files``), and the progress of a long step: the callback the core calls and when it is
shown (``progress``).

May import: ``dlrm_cli.config`` and ``dlrm_cli.errors`` only. Nothing here imports torch at import time.
"""
