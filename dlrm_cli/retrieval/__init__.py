"""The first of two stages: candidates for each user, and what the second stage (a DLRM ranker) reads about them.

- ``history``: each user's known items, kept compactly in the checkpoint (the rows retrieval scores from, and
  what ``recommend`` leaves out).
- ``generators``: candidate generators fitted on those items: EASE (exact, for catalogues up to
  ``EASE_MAX_ITEMS``) and PureSVD (low-rank, for larger ones).
- ``features``: the pair features of a (user, candidate) pair: the generator's score, its standing among the
  user's scores, the candidate's rank, the item's and the user's activity.
- ``training_pairs``: the ranker's training pairs, their features computed out of fold.
- ``two_stage``: a checkpoint's two stages together, recommending: retrieve, then rank with a DLRM.

May import: ``dlrm_cli.config``, ``dlrm_cli.errors``, ``dlrm_cli.runtime``, ``dlrm_cli.data``, ``dlrm_cli.model``.
"""
