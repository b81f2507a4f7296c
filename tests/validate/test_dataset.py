"""The measurement log: strict reading, durable appends, resume after interruption."""

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from tvwsim.validate.dataset import MeasurementWriter, read_measurements

from tests.validate.fakes import make_row
from tvwsim.errors import InputError


def test_rows_round_trip_and_resume_skips_done(tmp_path):
    path = tmp_path / "m.jsonl"
    with MeasurementWriter(path) as log:
        for i in range(3):
            log.append(make_row(i))
    with MeasurementWriter(path) as log:
        assert log.done == {"p0", "p1", "p2"}
        log.append(make_row(3))
        with pytest.raises(InputError, match="already"):
            log.append(make_row(1))
    rows = read_measurements(path)
    assert [r["point"] for r in rows] == ["p0", "p1", "p2", "p3"]
    assert rows[3]["K"] == 67


def test_partial_last_line_is_cut_and_nothing_else_changes(tmp_path):
    path = tmp_path / "m.jsonl"
    with MeasurementWriter(path) as log:
        log.append(make_row(0))
        log.append(make_row(1))
    finished = path.read_bytes()
    partial = json.dumps(make_row(2))[:40].encode()
    path.write_bytes(finished + partial)
    with pytest.raises(InputError, match="incomplete"):
        read_measurements(path)
    with MeasurementWriter(path) as log:
        assert log.truncated_bytes == len(partial)
        assert log.done == {"p0", "p1"}
        log.append(make_row(2))
    data = path.read_bytes()
    assert data.startswith(finished)  # finished rows untouched, byte for byte
    assert [r["point"] for r in read_measurements(path)] == ["p0", "p1", "p2"]


def test_killed_writer_loses_at_most_the_row_in_progress(tmp_path):
    path = tmp_path / "m.jsonl"
    script = textwrap.dedent(
        f"""
        import time
        from tvwsim.validate.dataset import MeasurementWriter
        from tests.validate.fakes import make_row
        with MeasurementWriter({str(path)!r}) as log:
            for i in range(10_000):
                log.append(make_row(i))
                print(i, flush=True)
                time.sleep(0.002)
        """
    )
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=repo
    )
    reported = -1
    deadline = time.monotonic() + 30
    while reported < 20 and time.monotonic() < deadline:
        reported = int(proc.stdout.readline())
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # every row the writer reported as appended is on disk and readable
    with MeasurementWriter(path) as log:
        assert {f"p{i}" for i in range(reported + 1)} <= log.done
        first_new = max(int(p[1:]) for p in log.done) + 1
        log.append(make_row(first_new))
    rows = read_measurements(path)
    points = [r["point"] for r in rows]
    assert len(points) == len(set(points))
    assert points[: reported + 1] == [f"p{i}" for i in range(reported + 1)]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"schema": 99}, "schema"),
        ({"median_us": -1.0}, "median_us"),
        ({"times_us": []}, "times_us"),
        ({"M": "128"}, "M: Input should be a valid integer"),
        ({"M": True}, "M: Input should be a valid integer"),
        ({"pattern": "xw"}, "pattern: Input should be"),
        ({"implementation": "mkl"}, "implementation"),
        ({"surprise": 1}, "surprise: unknown key"),
    ],
)
def test_malformed_rows_are_rejected_with_line_and_field(tmp_path, change, message):
    path = tmp_path / "bad.jsonl"
    good = json.dumps(make_row(0))
    bad = json.dumps(make_row(1, **change))
    path.write_text(good + "\n" + bad + "\n")
    with pytest.raises(InputError, match=message) as err:
        read_measurements(path)
    assert "bad.jsonl:2" in str(err.value)


def test_missing_field_and_missing_file(tmp_path):
    row = make_row(0)
    del row["device"]
    path = tmp_path / "x.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(InputError, match="x.jsonl:1: device: missing"):
        read_measurements(path)
    with pytest.raises(InputError, match="no such file"):
        read_measurements(tmp_path / "absent.jsonl")
