"""Model side: adapters over transformers Auto classes, the embedded default model and its world."""
