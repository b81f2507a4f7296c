"""Where the model and silicon meet (`tvwsim.validate`): GPU sweeps and their runner,
timing, vendor baselines, device info, calibration, comparison and plots."""
