"""The company's side of the hub: contact files in (``ingest``, the watched ``inbox``), request
bodies in (``intake``, the ingest API's write path over the same reader, checks and writer) and
the company's own database read on a schedule (``source``: each ``[[source]]`` query diffed
against its last read and written through the same checks and writer);
change events out (``outbox``, each event as ``change_event`` defines it) as files and as
signed webhooks (``webhook_queue`` keeps each delivery, ``webhook_send`` signs and sends); and
the mirror written back to a file (``export``). A snapshot file and a source's full read both
replace a list's members: ``members`` has the queries and the mass-delete guard they share.

Each way in applies a whole file, request or read in one transaction or nothing (rule 6). It may
import ``core``, ``store`` and the cross-cutting root modules (config, errors, logs, metrics,
clock); never the engine, providers, commands or the daemon.
"""
