"""Data files shipped with the package (text corpora for data synth, the demo recipe)."""
