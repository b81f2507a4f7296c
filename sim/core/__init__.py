"""A cycle-level model of one SM running a CTA's steady-state main loop.

See `tvwsim.sim.core.model` (the cycle loop), `tvwsim.sim.core.streams` (the kernels' SASS
loops stored as package data) and docs/model.md section 5.7.
"""
