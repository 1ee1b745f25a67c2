"""Where a run's model and inputs come from: family presets (families), checkpoint folders,
GGUF files and fetched real models (checkpoint, gguf, fetch), seeded weights (weights), the
resolved source (source), token ids, tokenizers and chat formats (inputs, chat), generation
configs (genconfig). Importing this package imports no torch."""
