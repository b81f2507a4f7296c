"""The performance model: hardware presets, tile schedules, the SimPy engine, results.

Nothing here needs a GPU; it imports `kernels` only for formats and configs.
"""
