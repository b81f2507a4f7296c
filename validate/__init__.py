"""Where the model and silicon meet: GPU sweeps, vendor baselines, calibration, reports."""
