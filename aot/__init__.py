"""AOT: distributional preference alignment via optimal transport."""
