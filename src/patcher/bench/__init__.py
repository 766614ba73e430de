"""The benchmark: defenses in a plain dict (``defenses.DEFENSES``), the harness (``harness.run_bench``) and its report."""
