"""A trained model outside dlrm's own commands: a serving artifact in plain PyTorch (``export``, with the
modules it holds in ``artifact``) and a checkpoint behind an HTTP JSON API (``http``, run on uvicorn by
``server``).

May import: everything below the front ends (``config``, ``errors``, ``runtime``, ``data``, ``model``,
``store``, ``scoring``) and the Python API (``dlrm_cli.api``), which the HTTP server answers through.
"""
