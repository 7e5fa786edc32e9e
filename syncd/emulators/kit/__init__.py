"""What every provider emulator shares: the loopback HTTP server that runs ``httpx.Request ->
httpx.Response`` handlers, PHP-style form parsing, the fault switches and the admin controls.

It imports nothing from syncd outside ``syncd.emulators.kit``.
"""
