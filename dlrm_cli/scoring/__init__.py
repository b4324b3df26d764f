"""Using a trained model: scoring pairs in batches (``metrics``), error metrics and top-K ranking on
held-out rows (``evaluation``, with the ranking protocol and its baselines in ``ranking``), and answers for
users (``recommending``: predict, recommend, recommend for many).

May import: ``dlrm_cli.config``, ``dlrm_cli.errors``, ``dlrm_cli.runtime``, ``dlrm_cli.data``,
``dlrm_cli.model``, ``dlrm_cli.store``.
"""
