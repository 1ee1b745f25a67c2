"""Verdicts: what counts as too far (calibrate: the precision twin, excess, budget) and where
and why a candidate diverged (diagnose)."""
