"""tvwsim: how fast would this sparse DNN run on that GPU, and why."""

__version__ = "0.1.0"
