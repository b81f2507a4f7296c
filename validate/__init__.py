"""Where the model and silicon meet (`tvwsim.validate`).

The data path of a measured row, one module per step:

- `spec`: a sweep spec (`sweeps/*.toml`) checked and expanded into `points`;
- `runner`: measures every point not yet in the file, through an executor
  (`gpu_executor`: inputs built by `inputs`, timed and checked by `timing`; vendor
  libraries by `baselines`; the device described by `device_info`), one `rows` row per
  point appended to a `dataset` file;
- `split` (which rows train, which test), `replay` (a row's schedule simulated again),
  `fit` and `calibrate`: a calibrated preset;
- `compare` and `plots`: simulated vs measured on the held-out shapes.
"""
