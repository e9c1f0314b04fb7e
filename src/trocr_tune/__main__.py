"""`python -m trocr_tune` runs the CLI."""

from .cli import main

main()
