"""trocr-tune: fine-tune, evaluate, optimize and serve TrOCR models for handwriting."""

__version__ = "0.1.0"
