"""The library call behind each CLI command: cycles (``run-once``, ``plan``, ``status``,
``resolve``), ``check-config``, the starter config of ``init`` and the ``demo``; and the socket
behind ``[http] listen`` (``listener``) with the job routes Netcore calls (``job_routes``), which
``run-once`` serves alone and the daemon beside its own routes, and the ingest API's routes
(``api_routes``); ``webhooks replay``, the webhook lines of ``status`` and ``run-once``'s
delivery pass (``webhook_admin``); provider webhooks in: their route (``hook_routes``) and
``hooks install|status|remove`` (``hooks``); ``source pull`` and the source lines of ``status``,
also what the daemon runs on each source's schedule (``sources``); ``ingest`` with its progress
(``ingest``); ``explain`` and ``runs``, from each contact's history and the run records
(``explain``).

The click layer in ``syncd.cli`` only parses arguments and prints; everything a command does is
here, callable from tests and the daemon. It may import the engine, providers, local side, store,
core, the emulators and the root modules; never ``daemon`` or ``cli``.
"""
