"""Where ratings come from and how they become model inputs.

- ``sources``: ``--data KIND[:PATH]`` as a ``DataSource``, and the ``Dataset`` it yields (``load_dataset``).
- ``readers``, ``headers``, ``cache``: MovieLens releases and CSV tables, parsed once and cached.
- ``features``: splits, id vocabularies, side features, normalisation.
- ``catalog``: the users and items as tensors, and a batch as the model's dense tensor and ``KeyedJaggedTensor``.
- ``synthetic``: the built-in data, with its known noise floor.

May import: ``dlrm_cli.config`` and ``dlrm_cli.errors``.
"""
