"""Dataset side: layouts -> LineSample records -> cleaned, split samples."""
