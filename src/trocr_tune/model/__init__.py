"""Model side: loading, from-scratch presets, tokenizer, input geometry."""
