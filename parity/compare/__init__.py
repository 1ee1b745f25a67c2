"""Comparison primitives: the statistics of one tensor pair (diff), their fused GPU kernels
(fused, kernels), and elementwise tolerance tables (tolerances). No torch at import here."""
