"""Faithful local emulators of every supported provider, for tests, the demo and
``syncd emulate``: same URLs, encodings, limits, answers and status rules as the providers'
documentation (``shared/providers``), with switches for injected faults.

Each emulator is one file built on ``syncd.emulators.kit``; emulators import nothing else from
syncd, so they stay an independent second reading of the providers' rules.
"""
