"""The pure core: the contact value and its normalisation, the projection a target sees, the
three-way merge (``reconcile``), what a provider call is (``calls``) and the batching of pushes
into such calls (``batching``).

Nothing here does I/O or reads a clock, so every rule can be tested as a table and by Hypothesis
on millions of keys. It may import only ``syncd.errors``; everything else in syncd may import it.
"""
