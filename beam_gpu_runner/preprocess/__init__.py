"""preprocess layer (see BUILD_NOTES.md, layering rules)."""
