"""The library call behind each CLI command: cycles (``run-once``, ``plan``, ``status``,
``resolve``), ``check-config``, the starter config of ``init`` and the ``demo``.

The click layer in ``syncd.cli`` only parses arguments and prints; everything a command does is
here, callable from tests and the daemon. It may import the engine, providers, local side, store,
core and the root modules; never ``daemon`` or ``cli``.
"""
