"""Design-space exploration (`tvwsim.explore`): many hardware points, one store.

The data path of `tvwsim explore SPEC.toml --store DIR`, one module per step:

- `spec`: the spec file (pydantic-checked) -> hardware points (`design`: grid, Latin
  hypercube or Sobol), workloads, runs; every point a checked `Hardware`;
- `evaluate`: one batch of units (hardware point x workload) simulated in one process;
- `runner`: batches out to Dask (a local cluster, or an existing one), results back;
- `store`: each finished batch a Parquet file, resumable, guarded by the spec's digest;
- `report`: best points, speedup heatmaps, per-pattern sensitivity, fastest pattern.
"""
