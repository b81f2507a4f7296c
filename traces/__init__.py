"""Workloads and weights: what the model is asked to run.

Workload catalogs (`catalog`, data in `workloads/`), real trained weights
(`real_weights`), the pruned traces built from them (`trace_files`, data in `pruned/`),
the MiniLM pruning-quality table (`quality`), measured silicon rows (`measured/`) and
rows converted from published silicon timings (`published/`).
All data files ship inside the package and are read through `importlib.resources`.
"""
