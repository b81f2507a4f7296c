"""Replaying a measured row in the model: rebuild its schedule, simulate it on any preset.

Each row's schedule is rebuilt exactly as the GPU sweep built it
(`tvwsim.kernels.prepare.schedule_for_shape` with the row's shape, pattern, sparsity,
config, policy and seed) and its digest checked against the row's `schedule_digest`;
the kernel's per-CTA resources are the ones measured with the row (registers and shared
memory of the cubin that ran). `RowSimulator` simulates many rows on one Hardware, in
worker processes when asked: a fit evaluates all rows a few hundred times.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from tvwsim.sim.hardware import Hardware

from tvwsim.config import KernelConfig
from tvwsim.pattern_spec import PATTERNS


@dataclass(frozen=True, eq=False)
class RowCase:
    """A measured row, ready to simulate on any Hardware."""

    row: Mapping
    schedule: Any
    """`tvwsim.schedule.Schedule` rebuilt from the row."""
    resources: Any
    """`tvwsim.sim.occupancy.KernelResources` of the kernel that ran (or None: estimate)."""
    measured_us: float
    digest_matches: bool | None
    """Whether the rebuilt schedule's digest equals the row's (None if the row has none)."""
    layout: Any = None
    """A library row's operand layout (`tvwsim.sim.library.Layout`): its DRAM rate
    depends on it. None for our kernels."""
    csr_nnz: float | None = None
    """A cuSPARSE CSR row's stored nonzeros: its time is the closed-form CSR SpMM
    (`tvwsim.sim.library.cusparse_csr_us`), not a simulated schedule."""

    def simulate_us(self, hw: Hardware) -> float:
        from tvwsim.sim.engine import simulate

        if self.csr_nnz is not None:
            from tvwsim.sim.library import cusparse_csr_us

            s = self.schedule
            dtype = (self.row.get("extra") or {}).get("dtype")
            element_bytes = 4 if dtype == "fp32" else 2
            return cusparse_csr_us(hw, s.m, s.n, s.k, self.csr_nnz, element_bytes=element_bytes)
        if self.layout is not None:
            from tvwsim.sim.library import layout_hardware

            hw = layout_hardware(hw, self.layout, self.schedule)
        # The exact engine: a fit differentiates this time by small steps of the
        # parameters, and the fast-forward's choice of what to skip may flip between
        # two such steps; the exact engine's time moves smoothly with them.
        return float(simulate(self.schedule, hw, self.resources, cache=False, exact=True).time_us)


def row_config(row: Mapping) -> KernelConfig:
    """The KernelConfig a row of our kernels ran (its mma kind from the row or pattern)."""
    mma = row.get("mma")
    if mma not in ("dense", "sparse"):
        mma = PATTERNS[row["pattern"]].mma
    return KernelConfig.from_name(row["config"], mma=mma)


def row_resources(row: Mapping, config: KernelConfig):
    """Per-CTA resources recorded with the row, or None if it has none."""
    from tvwsim.manifest import KernelResources

    res = row.get("resources") or {}
    try:
        return KernelResources(
            registers_per_thread=int(res["registers"]),
            smem_bytes=int(res["smem_bytes"]),
            threads=int(res.get("threads", config.threads)),
            source="manifest",
        )
    except (KeyError, TypeError, ValueError):
        return None


def row_case(row: Mapping, hw: Hardware | None = None) -> RowCase:
    """Rebuild a row's schedule exactly as the sweep built it (seeded weight, pruner); for
    a vendor library row, the kernel `tvwsim.sim.library` picks for its shape on `hw`
    (needed then: a library's choice depends on the GPU)."""
    from tvwsim.validate.split import LIBRARY_IMPLEMENTATIONS

    if row.get("implementation", "tvwsim") in LIBRARY_IMPLEMENTATIONS:
        return library_row_case(row, hw)
    from tvwsim.kernels.prepare import schedule_for_shape

    config = row_config(row)
    schedule = schedule_for_shape(
        int(row["M"]),
        int(row["N"]),
        int(row["K"]),
        row["pattern"],
        float(row["target_sparsity"]),
        config=config,
        policy=row["policy"],
        seed=int(row.get("seed", 0)),
        block=int(row.get("block", 32)),
    )
    recorded = row.get("schedule_digest")
    matches = None if not recorded else recorded == schedule.digest()
    return RowCase(
        row=row,
        schedule=schedule,
        resources=row_resources(row, config),
        measured_us=float(row["median_us"]),
        digest_matches=matches,
    )


_WORKER_CASES: Sequence[RowCase] = ()
"""The rows a worker process simulates: handed over once, when the worker starts."""


def _init_worker(cases: Sequence[RowCase]) -> None:
    global _WORKER_CASES
    _WORKER_CASES = cases


def _simulate_rows(args: tuple[Hardware, list[int]]) -> list[float]:
    hw, indices = args
    return [_WORKER_CASES[i].simulate_us(hw) for i in indices]


class RowSimulator:
    """Simulates every row on a Hardware, in this process or in `jobs` worker processes.

    A fit evaluates all rows a few hundred times (once per step, once per parameter for
    each Jacobian), and a large GEMM takes a second to simulate, so a sweep of a few
    hundred rows is worth spreading over the cores. Each worker receives the rebuilt
    schedules once, when it starts (inherited without a copy where processes fork), so
    it never prunes and encodes again; each evaluation sends only the Hardware. Rows are
    dealt to workers largest first (by pipeline stages, the engine's unit of work) onto
    the least loaded worker, so the workers finish together.
    """

    def __init__(self, cases: Sequence[RowCase], jobs: int = 1):
        self.cases = list(cases)
        self.pool: ProcessPoolExecutor | None = None
        self.bins: list[list[int]] = [list(range(len(self.cases)))]
        if jobs > 1 and len(self.cases) > 1:
            jobs = min(jobs, len(self.cases))
            cost = [float(c.schedule.task_stages().sum()) + 1.0 for c in self.cases]
            bins: list[list[int]] = [[] for _ in range(jobs)]
            load = [0.0] * jobs
            for i in sorted(range(len(cost)), key=lambda i: -cost[i]):
                j = load.index(min(load))
                bins[j].append(i)
                load[j] += cost[i]
            self.bins = bins
            methods = multiprocessing.get_all_start_methods()
            context = multiprocessing.get_context("fork" if "fork" in methods else None)
            self.pool = ProcessPoolExecutor(
                jobs, mp_context=context, initializer=_init_worker, initargs=(self.cases,)
            )

    def __call__(self, hw: Hardware) -> np.ndarray:
        if self.pool is None:
            return np.array([c.simulate_us(hw) for c in self.cases])
        out = np.empty(len(self.cases))
        results = self.pool.map(_simulate_rows, [(hw, b) for b in self.bins])
        for indices, times in zip(self.bins, results, strict=True):
            out[indices] = times
        return out

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)
            self.pool = None


def row_layout(row: Mapping):
    """The operand layout a library row ran (`tvwsim.sim.library.Layout`): from a
    published row's `provenance.layout` ("..., K contiguous" per operand), else ours
    (rows we measured call the library on our kernels' buffers)."""
    from tvwsim.sim.library import OURS, Layout

    stated = (row.get("provenance") or {}).get("layout") or {}
    if "w" not in stated or "x" not in stated:
        return OURS
    return Layout(
        w_k_contiguous=str(stated["w"]).endswith("K contiguous"),
        x_k_contiguous=str(stated["x"]).endswith("K contiguous"),
    )


def library_row_case(row: Mapping, hw: Hardware | None) -> RowCase:
    """A cuBLAS / cuSPARSELt row replayed as the kernel a library would pick on `hw`, in
    the row's operand layout (a cuSPARSE CSR row as `tvwsim.sim.library.cusparse_csr_us`).

    The choice is made once, on `hw` (the base preset of a fit): a library's heuristic
    picks per GPU, not per efficiency value, and a fit evaluates the same kernels on every
    trial hardware."""
    from tvwsim.sim.library import choose
    from tvwsim.sim.occupancy import estimate_resources
    from tvwsim.validate.split import LIBRARY_IMPLEMENTATIONS

    from tvwsim.errors import InputError

    if hw is None:
        raise InputError("hw", "replaying a vendor library row needs the hardware it picks for")
    pattern = LIBRARY_IMPLEMENTATIONS[row["implementation"]]
    if pattern == "ew":
        # cuSPARSE CSR: a row-split CSR SpMM in closed form over the row's nonzeros; the
        # ew schedule of its seeded weight is kept for what compare reports of a row.
        from tvwsim.kernels.prepare import schedule_for_shape

        schedule = schedule_for_shape(
            int(row["M"]),
            int(row["N"]),
            int(row["K"]),
            "ew",
            float(row["target_sparsity"]),
            seed=int(row.get("seed", 0)),
        )
        return RowCase(
            row=row,
            schedule=schedule,
            resources=estimate_resources(schedule.config),
            measured_us=float(row["median_us"]),
            digest_matches=None,
            csr_nnz=int(row["N"]) * int(row["K"]) * (1.0 - float(row["achieved_sparsity"])),
        )
    layout = row_layout(row)
    choice = choose(hw, int(row["M"]), int(row["N"]), int(row["K"]), pattern, layout=layout)
    return RowCase(
        row=row,
        schedule=choice.schedule,
        resources=estimate_resources(choice.config),
        measured_us=float(row["median_us"]),
        digest_matches=None,
        layout=layout,
    )
