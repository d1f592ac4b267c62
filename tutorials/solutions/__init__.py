"""Solutions to the exercises of the tutorial notebooks, one importable module per notebook."""
