"""One migration per schema change, in order from ``r0001_baseline``; each names the one before."""
