"""The quantization runner: a process per variant (a Python error, a crash, an unavailable variant each end only
their own row), the reference first, results kept and reused, Stop ending the measuring process; and the report's
Pareto front and speed ratios. The family here is tests/quantization/family_for_tests.py (no model)."""

from __future__ import annotations

import os
import threading
import time

import pytest

from spaces.quantization import report, runner
from spaces.quantization.runner import Row


@pytest.fixture
def test_family(monkeypatch, tmp_path):
    monkeypatch.setenv("PLAYGROUND_HOME", str(tmp_path / "home"))
    monkeypatch.setitem(runner.FAMILIES, "test", "tests.quantization.family_for_tests")
    return "test"


def work_dir_of(params: dict):
    return next((runner.read_settings().home / "quantization" / "work").glob("test-*"))


def test_each_variant_ends_on_its_own_and_the_others_go_on(test_family):
    rows = list(runner.compare(test_family, ["raises", "crashes", "unavailable", "after"], {}))
    by_name = {r.variant: r for r in rows}
    assert [r.variant for r in rows] == ["reference", "raises", "crashes", "unavailable", "after"]  # reference first
    assert by_name["reference"].status == "measured" and by_name["reference"].figures["score"] == 1.0
    assert by_name["raises"].status == "failed" and "this variant cannot be built" in by_name["raises"].reason
    assert by_name["crashes"].status == "failed" and "without a result" in by_name["crashes"].reason
    assert by_name["unavailable"].status == "unavailable" and by_name["unavailable"].reason == "needs a GPU"
    assert by_name["after"].status == "measured" and by_name["after"].figures["score"] == pytest.approx(0.9)
    assert by_name["after"].figures["peak RSS MB"] > 1  # the worker's own peak, added by the worker


def test_results_are_kept_and_measured_again_only_when_asked(test_family):
    first = list(runner.compare(test_family, ["after"], {"score": 2.0}))
    again = list(runner.compare(test_family, ["after"], {"score": 2.0}))
    assert [r.status for r in first] == ["measured", "measured"]
    assert [r.status for r in again] == ["cached", "cached"] and again[1].figures == first[1].figures
    calls = (work_dir_of({}) / "calls.txt").read_text().split()
    assert calls == ["reference", "after"]  # the second comparison ran no process
    other = list(runner.compare(test_family, ["after"], {"score": 3.0}))  # other settings: another key
    assert [r.status for r in other] == ["measured", "measured"] and other[1].figures["score"] == pytest.approx(2.7)
    fresh = list(runner.compare(test_family, ["after"], {"score": 2.0}, use_cache=False))
    assert [r.status for r in fresh] == ["measured", "measured"]
    assert runner.forget_results(test_family) == 4
    assert [r.status for r in runner.compare(test_family, ["after"], {"score": 2.0})] == ["measured", "measured"]


def test_failed_rows_are_not_kept(test_family):
    list(runner.compare(test_family, ["raises"], {}))
    assert [r.status for r in runner.compare(test_family, ["raises"], {})] == ["cached", "failed"]


def test_stop_ends_the_measuring_process(test_family):
    stop = threading.Event()
    messages: list[str] = []
    rows: list[Row] = []

    def work():
        rows.extend(runner.compare(test_family, ["slow", "after"], {}, lambda f, t: messages.append(t), stop))

    thread = threading.Thread(target=work)
    thread.start()
    deadline = time.time() + 60
    while time.time() < deadline and not any("measuring slow" in m for m in messages):
        time.sleep(0.1)
    pid = int((work_dir_of({}) / "slow.pid").read_text())
    stop.set()
    thread.join(30)
    assert not thread.is_alive()
    assert [r.status for r in rows] == ["measured", "stopped"]  # "after" never started
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # the worker is gone, not left computing
    assert any(m.startswith("[2/3] Works until stopped: measuring slow") for m in messages)


def test_unknown_variants_and_families_are_refused(test_family):
    with pytest.raises(ValueError, match="unknown variant"):
        runner.check_variants(test_family, ["int3"])
    with pytest.raises(ValueError, match="at least one"):
        runner.check_variants(test_family, [])
    with pytest.raises(ValueError, match="family must be one of"):
        runner.family("vision")


@pytest.mark.parametrize("points, higher, front", [
    ([(10, 0.90), (5, 0.89), (20, 0.91), (6, 0.80), (5, 0.85)], True, [1, 0, 2]),
    ([(10, 5.0), (5, 6.0), (20, 4.0), (6, 7.0)], False, [1, 0, 2]),  # perplexity: lower is better
    ([(1, 1.0), (1, 1.0)], True, [0, 1]),  # ties dominate neither
])
def test_pareto_front(points, higher, front):
    assert report.pareto_front(points, higher) == front


def test_results_frame_speed_ratio_and_reasons():
    rows = [Row("pytorch-fp32", "fp32", "measured", {"p50 ms": 12.0, "accuracy": 0.8, "notes": ""}),
            Row("onnx-int8", "int8", "cached", {"p50 ms": 4.0, "accuracy": 0.79, "notes": "AVX2"}),
            Row("gpu", "bnb", "unavailable", reason="needs a GPU")]
    frame = report.results_frame(rows, "pytorch-fp32")
    assert list(frame["speed × fp32"][:2]) == [1.0, 3.0]
    assert frame.loc[2, "notes"] == "needs a GPU" and frame.columns[0] == "variant"
    assert report.scatter_chart(frame, "accuracy") is not None and report.bar_charts(frame) is not None
    assert report.scatter_chart(frame.iloc[2:], "accuracy") is None  # nothing measured: no empty axes


def test_missing_figures_are_blank_not_nan():
    rows = [Row("pytorch-fp32", "fp32", "measured", {"p50 ms": 12.0, "accuracy": 0.8}),
            Row("onnx-int8", "int8", "failed", reason="cannot export")]
    frame = report.rounded(report.results_frame(rows, "pytorch-fp32"))
    assert frame.loc[1, "p50 ms"] is None and frame.loc[1, "notes"] == "cannot export"
