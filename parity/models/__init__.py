"""Model code that transformers does not ship (Qwen v1) and candidate ports, as plain torch."""
