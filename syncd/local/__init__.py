"""The company's side of the hub: contact files in (``ingest``, the watched ``inbox``), change
events out (``outbox``, each event as ``change_event`` defines it) and the mirror written back to
a file (``export``).

Each way in applies a whole file in one transaction or nothing (rule 6). It may import ``core``,
``store`` and the cross-cutting root modules (config, errors, logs, metrics, clock); never the
engine, providers, commands or the daemon.
"""
