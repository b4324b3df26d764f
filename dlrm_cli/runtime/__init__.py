"""The process around the model: how many CPU threads torch uses (``threads``), how the C allocator hands
memory back (``memory``), third-party log noise silenced around one call (``quiet``), and files written
outside the checkpoint store (``files``).

May import: ``dlrm_cli.config`` and ``dlrm_cli.errors`` only. Nothing here imports torch at import time.
"""
