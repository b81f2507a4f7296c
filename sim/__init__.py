"""The performance model (`tvwsim.sim`): hardware presets, occupancy, the SimPy engine,
results, timelines and whole-model simulation.

Nothing here needs a GPU. It reads tile schedules (`tvwsim.schedule`) made by the
kernels' own prepare path (`tvwsim.kernels.prepare`) and workload catalogs and traces
(`tvwsim.traces`); it never imports `tvwsim.validate` or the CLI (docs/architecture.md).
"""
