"""tvwsim: how fast would this sparse DNN run on that GPU, and why.

The public Python API. Everything the command line does is reachable from here:

    import tvwsim

    hw = tvwsim.load_preset("a100", overrides={"sm_count": 216})
    weight = tvwsim.synthetic_weight(3072, 768, seed=0)
    prepared = tvwsim.prepare_weight(weight, "tvw", 0.75, tvwsim.default_config("tvw"))
    schedule = tvwsim.build_schedule(prepared.work, m=4096, policy="longest-first")
    result = tvwsim.simulate(schedule, hw)
    print(result.time_us, result.bottleneck)

Names are imported on first use (PEP 562), so `import tvwsim` stays cheap and never
imports the model, the kernels or the validator before they are asked for. The layers
behind these names are drawn in docs/architecture.md.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# name -> module that defines it. One row per public name (never the name of a
# submodule: importing that submodule would rebind it); the test suite checks that
# every row resolves and that the module really defines the name.
_API: dict[str, str] = {
    # the shared contract
    "InputError": "tvwsim.errors",
    "PatternSpec": "tvwsim.pattern_spec",
    "PATTERNS": "tvwsim.pattern_spec",
    "check_sparsity": "tvwsim.pattern_spec",
    "KernelConfig": "tvwsim.config",
    "default_config": "tvwsim.config",
    "TileWork": "tvwsim.schedule",
    "Schedule": "tvwsim.schedule",
    "POLICIES": "tvwsim.schedule",
    "build_schedule": "tvwsim.schedule",
    # kernels: weights, pruning, encodings
    "synthetic_weight": "tvwsim.kernels.prepare",
    "prepare_weight": "tvwsim.kernels.prepare",
    "PreparedWeight": "tvwsim.kernels.prepare",
    "schedule_for_shape": "tvwsim.kernels.prepare",
    "prune": "tvwsim.kernels.patterns",
    "prune_with_layout": "tvwsim.kernels.patterns",
    "encode": "tvwsim.kernels.formats",
    "tile_work": "tvwsim.kernels.tile_work",
    # workloads
    "load_workload": "tvwsim.traces.catalog",
    "list_workloads": "tvwsim.traces.catalog",
    # the model
    "Hardware": "tvwsim.sim.hardware",
    "load_preset": "tvwsim.sim.presets",
    "list_presets": "tvwsim.sim.presets",
    "simulate": "tvwsim.sim.engine",
    "simulate_model": "tvwsim.sim.model",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> object:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'tvwsim' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
