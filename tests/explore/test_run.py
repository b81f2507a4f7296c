"""Running an exploration: a Dask cluster gives the serial rows exactly, a stopped run
resumes to every point exactly once, and the store refuses to mix specs."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from tvwsim.explore.evaluate import evaluate_unit, units
from tvwsim.explore.runner import plan_batches, run_exploration
from tvwsim.explore.spec import load_spec
from tvwsim.explore.store import MANIFEST, Store, read_rows

from tests.explore.conftest import TINY, write_spec
from tvwsim.errors import InputError


def _rows(directory: Path) -> pd.DataFrame:
    return read_rows(directory).sort_values("key").reset_index(drop=True)


@pytest.fixture(scope="module")
def serial_store(tmp_path_factory) -> Path:
    """The tiny spec run in this process: the reference rows."""
    root = tmp_path_factory.mktemp("serial")
    spec = load_spec(write_spec(root, TINY))
    summary = run_exploration(spec, Store(root / "store", spec), workers=0)
    assert summary.complete and summary.rows == 36 and summary.workers == 0
    return root / "store"


@pytest.mark.filterwarnings("ignore:Port .* is already in use")
def test_two_dask_workers_give_the_serial_rows_exactly(serial_store, tmp_path):
    """On an existing two-worker LocalCluster, reached by its address like a remote one
    (the test below runs the runner's own local cluster)."""
    import logging

    from dask.distributed import LocalCluster

    spec = load_spec(write_spec(tmp_path, TINY))
    seen: list[int] = []
    with LocalCluster(
        n_workers=2, threads_per_worker=1, dashboard_address=None, silence_logs=logging.ERROR
    ) as cluster:
        summary = run_exploration(
            spec,
            Store(tmp_path / "dask", spec),
            scheduler=cluster.scheduler_address,
            on_batch=lambda n, _: seen.append(n),
        )
        # The same cluster through a scheduler file, as `dask scheduler --scheduler-file`
        # writes one (its address is what a client reads).
        sched = tmp_path / "scheduler.json"
        sched.write_text(json.dumps({"address": cluster.scheduler_address}))
        by_file = run_exploration(
            spec, Store(tmp_path / "by-file", spec), scheduler_file=str(sched)
        )
    assert summary.workers == 2 and summary.complete
    assert summary.batches > 2  # really spread over tasks, not one batch
    assert sum(seen) == summary.rows == 36
    serial, dask = _rows(serial_store), _rows(tmp_path / "dask")
    pd.testing.assert_frame_equal(serial, dask, check_exact=True)
    assert by_file.workers == 2 and by_file.complete
    pd.testing.assert_frame_equal(serial, _rows(tmp_path / "by-file"), check_exact=True)


def test_rows_are_what_the_engine_says(serial_store):
    from tvwsim.kernels.prepare import schedule_for_shape
    from tvwsim.sim.engine import simulate
    from tvwsim.sim.presets import load_preset

    rows = _rows(serial_store)
    assert len(rows) == 36 and rows["key"].is_unique
    row = rows[
        (rows.pattern == "tw") & (rows.sm_count == 2) & (rows.workload == "small 256x512x512")
    ]
    row = row.sort_values("l2_bandwidth_gbps").iloc[0]
    hw = load_preset("a100", {"sm_count": 2, "l2_bandwidth_gbps": row.l2_bandwidth_gbps})
    result = simulate(schedule_for_shape(256, 512, 512, "tw", 0.75), hw)
    assert row.time_us == result.time_us
    assert row.bottleneck == result.bottleneck
    assert row.compute_utilisation == result.compute_utilisation
    assert row.hw_sm_count == 2 and row.hw_dram_bandwidth_gbps == hw.dram_bandwidth_gbps
    assert row.hardware == hw.label
    # Speedup over the dense row of the same point and workload.
    same = rows[(rows.unit == row.unit) & (rows.pattern == "dense")].iloc[0]
    assert row.dense_time_us == same.time_us
    assert row.speedup == same.time_us / row.time_us
    assert (rows[rows.pattern == "dense"].speedup == 1.0).all()
    # The SM count matters on these few-tile GEMMs: the design really varies something.
    assert rows.groupby("sm_count").time_us.mean().nunique() == 2


def test_a_stopped_run_resumes_to_every_point_exactly_once(serial_store, tmp_path):
    spec = load_spec(write_spec(tmp_path, TINY))
    store = Store(tmp_path / "run", spec)
    first = run_exploration(spec, store, workers=0, batch_size=2, max_batches=2)
    assert (first.batches, first.done, first.complete) == (2, 4, False)
    assert len(store.batch_files()) == 2
    kept = _rows(tmp_path / "run")
    # A temporary file of a batch that was in flight when the run died.
    (tmp_path / "run" / ".batch-dead.x.parquet").write_bytes(b"PAR1 torn")
    again = run_exploration(spec, Store(tmp_path / "run", spec), workers=0, batch_size=3)
    assert (again.skipped, again.done, again.complete) == (4, 8, True)
    rows = _rows(tmp_path / "run")
    assert rows["key"].is_unique and len(rows) == 36
    assert not list((tmp_path / "run").glob(".batch-*"))
    # Rows written before the stop are untouched, and the whole equals one serial run.
    pd.testing.assert_frame_equal(rows[rows.key.isin(kept.key)].reset_index(drop=True), kept)
    pd.testing.assert_frame_equal(rows, _rows(serial_store), check_exact=True)
    assert run_exploration(spec, Store(tmp_path / "run", spec), workers=0).done == 0


def test_an_interrupted_dask_run_keeps_its_written_batches(serial_store, tmp_path):
    spec = load_spec(write_spec(tmp_path, TINY))
    store = Store(tmp_path / "run", spec)

    def ctrl_c(rows: int, label: str) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_exploration(spec, store, workers=2, batch_size=1, on_batch=ctrl_c)
    assert len(store.batch_files()) == 1  # written before the interrupt; the rest cancelled
    assert len(store.done_units()) == 1
    done = run_exploration(spec, Store(tmp_path / "run", spec), workers=0)
    assert done.skipped == 1 and done.complete
    pd.testing.assert_frame_equal(_rows(tmp_path / "run"), _rows(serial_store), check_exact=True)


def test_the_store_refuses_another_spec_and_foreign_folders(tmp_path):
    spec = load_spec(write_spec(tmp_path, TINY))
    store = Store(tmp_path / "store", spec)
    assert not (tmp_path / "store").exists()  # nothing until the first batch
    run_exploration(spec, store, workers=0, batch_size=1, max_batches=1)
    assert (tmp_path / "store" / MANIFEST).is_file()
    assert (tmp_path / "store" / "_spec.toml").read_text() == TINY
    other = load_spec(write_spec(tmp_path, TINY.replace("[2, 4]", "[2, 8]"), "other.toml"))
    with pytest.raises(InputError, match=r"^--store: .* holds the rows of another spec"):
        Store(tmp_path / "store", other)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not empty and not an exploration store"):
        Store(tmp_path / "busy", spec)
    for path in store.batch_files():
        path.unlink()
    with pytest.raises(InputError, match="holds no rows yet"):
        read_rows(tmp_path / "store")


def test_an_unreachable_scheduler_is_one_quick_error_and_writes_nothing(
    tiny_spec, tmp_path, monkeypatch, capsys
):
    import socket
    import time

    from tvwsim.explore import runner
    from tvwsim.explore.runner import CONNECT_TIMEOUT_S

    from tvwsim.cli import main

    with socket.socket() as probe:  # a port nobody listens on: bound, closed, then free
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    spec = load_spec(tiny_spec)
    began = time.perf_counter()
    with pytest.raises(InputError) as err:
        run_exploration(spec, Store(tmp_path / "lib", spec), scheduler=address)
    assert time.perf_counter() - began < CONNECT_TIMEOUT_S + 10  # no hang, no retry loop
    assert err.value.argument == "--scheduler"
    assert f"cannot reach a Dask scheduler at {address}" in err.value.problem
    assert not (tmp_path / "lib").exists()
    monkeypatch.setattr(runner, "CONNECT_TIMEOUT_S", 2)  # the rest: the same path, shorter
    # The command: the same one line, exit status 2, no store folder.
    store = tmp_path / "cli"
    argv = ["explore", str(tiny_spec), "--store", str(store), "--scheduler", address]
    assert main([*argv, "--no-progress"]) == 2
    assert "tvwsim explore: error: --scheduler: cannot reach" in capsys.readouterr().err
    assert not store.exists()
    missing = tmp_path / "no-scheduler.json"
    with pytest.raises(InputError, match=r"^--scheduler-file: cannot reach a Dask scheduler"):
        run_exploration(spec, Store(store, spec), scheduler_file=str(missing))
    assert not store.exists()


@pytest.mark.filterwarnings("ignore:Port .* is already in use")
def test_a_scheduler_without_workers_is_one_error_and_writes_nothing(
    tiny_spec, tmp_path, monkeypatch
):
    import logging

    from dask.distributed import LocalCluster
    from tvwsim.explore import runner

    monkeypatch.setattr(runner, "WORKERS_TIMEOUT_S", 1)
    spec = load_spec(tiny_spec)
    with LocalCluster(n_workers=0, dashboard_address=None, silence_logs=logging.ERROR) as idle:
        with pytest.raises(InputError, match=r"^--scheduler: the Dask scheduler at .* has no"):
            run_exploration(spec, Store(tmp_path / "store", spec), scheduler=idle.scheduler_address)
    assert not (tmp_path / "store").exists()


def test_batches_keep_a_workload_together_and_stay_small(tmp_path):
    text = TINY.replace("[2, 4]", "[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]")
    spec = load_spec(write_spec(tmp_path, text))
    every = units(spec)
    assert len(every) == 60
    assert [u.workload.label for u in every[:30]] == ["small 256x512x512"] * 30
    batches = plan_batches(every, workers=2)
    assert len(batches) == 8 and max(map(len, batches)) == 8
    assert [u for b in batches for u in b] == every
    assert max(map(len, plan_batches(every * 10, workers=1))) == 16


def test_a_batch_keeps_sparse_core_siblings_together(tmp_path):
    text = TINY.replace("sm_count = [2, 4]", "sm_count = [2, 4]\nsparse_tflop_ratio = [0, 2, 4]")
    spec = load_spec(write_spec(tmp_path, text))
    every = units(spec)
    assert len(every) == 36  # 18 points x 2 GEMMs; siblings: the three ratios of a point
    batches = plan_batches(every, workers=2, batch_size=7)
    assert [len(b) for b in batches] == [6] * 6  # two whole groups each, not 7
    assert [u for b in batches for u in b] == every
    for batch in batches:
        for group in (batch[:3], batch[3:]):
            assert len({u.workload for u in group}) == 1
            values = [dict(u.point.values) for u in group]
            assert sorted(v["sparse_tflop_ratio"] for v in values) == [0.0, 2.0, 4.0]
            assert len({(v["sm_count"], v["l2_bandwidth_gbps"]) for v in values}) == 1


MODEL = """
description = "two GEMMs of a layer, one of them run four times"
source = "a test"
[[gemm]]
name = "proj"
m = "batch * seq"
n = 256
k = 256
count = 4
[[gemm]]
name = "scores"
m = "seq"
n = "seq"
k = 64
count = 8
prunable = false
"""


def test_a_model_workload_is_its_end_to_end_time(tmp_path):
    from tvwsim.sim.model import model_runs, simulate_model
    from tvwsim.sim.presets import load_preset
    from tvwsim.traces.catalog import load_workload

    catalog = tmp_path / "toy.toml"
    catalog.write_text(MODEL)
    text = (
        'base = "a100"\npatterns = ["tw"]\nsparsities = [0.75]\n[hardware]\nsm_count = [4]\n'
        f'[[workload]]\nmodel = "{catalog}"\nbatch = [1, 2]\nseq = 64\ntrace = "none"\n'
    )
    spec = load_spec(write_spec(tmp_path, text, "toy-space.toml"))
    assert [w.label for w in spec.workloads] == ["toy b1 s64", "toy b2 s64"]
    unit = units(spec)[1]
    rows = {r["pattern"]: r for r in evaluate_unit(unit)}
    hw = load_preset("a100", {"sm_count": 4})
    result = simulate_model(
        load_workload(str(catalog), batch=2, seq=64), hw, model_runs(["tw"], [0.75])
    )
    tw = result.runs[1]
    assert rows["tw"]["time_us"] == result.total_us(tw)
    assert rows["tw"]["speedup"] == result.speedup(tw)
    assert rows["tw"]["m"] is None and rows["tw"]["batch"] == 2
    layers = result.of(tw)
    weighted = sum(x.compute_utilisation * x.time_us for x in layers) / result.total_us(tw)
    assert rows["tw"]["compute_utilisation"] == pytest.approx(weighted)
    assert 0 < rows["tw"]["compute_utilisation"] <= 1
    assert rows["tw"]["bottleneck"] in {x.bottleneck for x in layers}
    hits = sum(x.l2_hit_rate * x.l2_bytes for x in layers) / sum(x.l2_bytes for x in layers)
    assert rows["tw"]["l2_hit_rate"] == pytest.approx(hits)
    assert rows["tw"]["config"] == rows["tw"]["kernel"] == "128x128x32s3w4"


def test_a_model_unit_simulates_only_the_spec_runs(tmp_path, monkeypatch):
    import tvwsim.sim.model as sim_model

    catalog = tmp_path / "toy.toml"
    catalog.write_text(MODEL)
    text = (
        'base = "a100"\npatterns = ["tw", "vw"]\nsparsities = [0.75]\n'
        f'[[workload]]\nmodel = "{catalog}"\nseq = 64\ntrace = "none"\n'
    )
    spec = load_spec(write_spec(tmp_path, text, "toy-space.toml"))
    asked = []
    real = sim_model.simulate_model

    def spy(workload, hw, runs, **kwargs):
        asked.append([(r.pattern, r.sparsity) for r in runs])
        return real(workload, hw, runs, **kwargs)

    monkeypatch.setattr(sim_model, "simulate_model", spy)
    rows = evaluate_unit(units(spec)[0])
    # vw's fixed 0.5 is not a target: no tw at 0.5. Dense-MMA and sparse-MMA kernels
    # run apart (the first call is shared by points that differ only in the sparse core).
    assert asked == [[("dense", 0.0), ("tw", 0.75)], [("dense", 0.0), ("vw", 0.5)]]
    assert [(r["pattern"], r["sparsity"]) for r in rows] == [
        ("dense", 0.0),
        ("tw", 0.75),
        ("vw", 0.5),
    ]


def test_a_model_builds_its_work_once_for_every_hardware_point(tmp_path, monkeypatch):
    import tvwsim.sim.model as sim_model
    from tvwsim.sim.presets import load_preset
    from tvwsim.traces.catalog import load_workload

    catalog = tmp_path / "toy2.toml"
    catalog.write_text(MODEL.replace("k = 256", "k = 384"))  # a workload no other test ran
    text = (
        'base = "a100"\npatterns = ["tw"]\nsparsities = [0.75]\n[hardware]\nsm_count = [1, 4]\n'
        f'[[workload]]\nmodel = "{catalog}"\nseq = 64\ntrace = "none"\n'
    )
    spec = load_spec(write_spec(tmp_path, text, "toy2-space.toml"))
    built = []
    real = sim_model.prepare_weight
    monkeypatch.setattr(
        sim_model, "prepare_weight", lambda *a, **k: built.append(a[1]) or real(*a, **k)
    )
    first, second = (evaluate_unit(u) for u in units(spec))
    assert built == ["tw"]  # the second point reused the first one's work
    hw = load_preset("a100", {"sm_count": 4})
    fresh = sim_model.simulate_model(
        load_workload(str(catalog), seq=64), hw, sim_model.model_runs(["tw"], [0.75])
    )
    assert [r["time_us"] for r in second] == [fresh.total_us(run) for run in fresh.runs]
    assert first[0]["time_us"] != second[0]["time_us"]  # dense: 1 SM vs 4


def test_a_model_workload_runs_the_spec_configs_and_auto(tmp_path):
    from tvwsim.sim.model import model_runs, simulate_model
    from tvwsim.sim.presets import load_preset
    from tvwsim.traces.catalog import load_workload

    from tvwsim.config import AUTO

    catalog = tmp_path / "toy.toml"
    catalog.write_text(MODEL)
    text = (
        'base = "a100"\npatterns = ["tw", "vw"]\nsparsities = [0.75]\n'
        '[configs]\ndense = ["auto", "64x128x32s3w4"]\ntw = ["128x128x32s3w4", "64x128x32s3w4"]\n'
        'vw = ["auto"]\n[hardware]\nsm_count = [4]\n'
        f'[[workload]]\nmodel = "{catalog}"\nseq = 64\ntrace = "none"\n'
    )
    spec = load_spec(write_spec(tmp_path, text, "toy-configs.toml"))
    rows = {(r["pattern"], r["config"]): r for r in evaluate_unit(units(spec)[0])}
    assert sorted(rows) == [
        ("dense", "64x128x32s3w4"),
        ("dense", "auto"),
        ("tw", "128x128x32s3w4"),
        ("tw", "64x128x32s3w4"),
        ("vw", "auto"),
    ]
    hw, workload = load_preset("a100", {"sm_count": 4}), load_workload(str(catalog), seq=64)

    def total(pattern: str, configs: dict) -> float:
        from tvwsim.explore.spec import kernel_config

        configs = {p: c if c == AUTO else kernel_config(p, c) for p, c in configs.items()}
        result = simulate_model(workload, hw, model_runs([pattern], [0.75]), configs=configs)
        return result.total_us(result.runs[-1])

    # The baseline is dense's first config, the library's; its GEMMs that are not
    # prunable run it in every run (the attention is the same kernel for every pattern).
    library = simulate_model(workload, hw, model_runs(["vw"], [0.75]), library=True)
    assert rows[("dense", "auto")]["time_us"] == library.total_us(library.dense)
    assert rows[("vw", "auto")]["time_us"] == library.total_us(library.runs[1])
    assert rows[("vw", "auto")]["kernel"] == "auto: cuSPARSELt per GEMM"
    narrow = rows[("tw", "64x128x32s3w4")]
    assert narrow["time_us"] == total("tw", {"dense": AUTO, "tw": "64x128x32s3w4"})
    assert narrow["time_us"] != rows[("tw", "128x128x32s3w4")]["time_us"]
    assert narrow["kernel"] == "64x128x32s3w4"
    assert narrow["dense_time_us"] == rows[("dense", "auto")]["time_us"]
    # Dense's other config is the whole model in that config, attention included.
    other = rows[("dense", "64x128x32s3w4")]
    assert other["time_us"] == total("dense", {"dense": "64x128x32s3w4"})
    assert other["speedup"] == rows[("dense", "auto")]["time_us"] / other["time_us"]
    for row in rows.values():  # every model row has its byte-weighted hit rate
        assert 0.0 < row["l2_hit_rate"] < 1.0


def test_config_auto_runs_what_a_library_picks_at_each_point(tmp_path):
    from tvwsim.sim import library
    from tvwsim.sim.presets import load_preset

    text = """
base = "h100"
patterns = ["vw", "tw"]
sparsities = [0.75]
[configs]
dense = ["auto", "128x128x32s3w4"]
vw = ["auto"]
[hardware]
sm_count = [4, 8]
[[workload]]
shape = [64, 1024, 4096]
"""
    spec = load_spec(write_spec(tmp_path, text, "auto.toml"))
    run_exploration(spec, Store(tmp_path / "store", spec), workers=0)
    rows = _rows(tmp_path / "store")
    auto = rows[rows.config == "auto"]
    assert set(auto.pattern) == {"dense", "vw"} and len(auto) == 4
    for _, row in auto.iterrows():
        hw = load_preset("h100", {"sm_count": int(row.sm_count)})
        choice = library.choose(hw, 64, 1024, 4096, row.pattern)
        assert row.time_us == choice.result.time_us
        assert row.kernel.startswith(choice.config.name) and "-wgmma" in row.kernel
    ours = rows[rows.config != "auto"]
    assert (ours.kernel == ours.config).all()  # our kernels: the config that ran
    # The baseline is dense's first config: the library's.
    first = rows[(rows.pattern == "tw")].iloc[0]
    dense_auto = auto[(auto.pattern == "dense") & (auto.unit == first.unit)].iloc[0]
    assert first.dense_time_us == dense_auto.time_us


def test_config_auto_is_refused_for_patterns_no_library_multiplies(tmp_path):
    text = TINY.replace("sparsities = [0.75]", 'sparsities = [0.75]\n[configs]\ntw = ["auto"]')
    with pytest.raises(InputError) as err:
        load_spec(write_spec(tmp_path, text))
    assert "configs" in err.value.argument and "cuBLAS" in err.value.problem
