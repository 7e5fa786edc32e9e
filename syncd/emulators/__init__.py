"""Faithful local emulators of every supported provider, for tests, the demo and
``syncd emulate``: same URLs, encodings, limits, answers and status rules as the providers'
documentation (``shared/providers``), with switches for injected faults.

Each emulator builds on ``syncd.emulators.kit`` (server, faults, controls, form parsing) and its
module ends with ``make_emulator(options)``, which the provider registry names. One provider is
one file, except Unisender/Selzy: ``unisender_account.py`` (the account), ``unisender_import.py``
(importContacts) and ``unisender.py`` (the API). Emulators import the kit and their own files,
never each other and nothing else from syncd, so they stay an independent second reading of the
providers' rules.
"""
