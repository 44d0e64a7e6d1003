"""tools/bench_scale.py --quick and tools/bench_transfer.py --quick run end to end and print their tables
(no timing is asserted: speed figures belong in the benchmark output and the README)."""
import pytest

from tool_loader import load_tool


def _table(out, title_start):
    """The rows of the table printed under the title starting with ``title_start``."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title_start))
    rows = []
    for line in lines[start + 3:]:
        if not line.strip():
            break
        rows.append(line.split())
    return lines[start + 1].split(), rows


@pytest.mark.slow
def test_bench_scale_quick_prints_every_table(capsys, tmp_path):
    tool = load_tool("bench_scale")
    assert tool.main(["--quick", "--work-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("machine: ")
    header, rows = _table(out, "Datasets:")
    assert header[:2] == ["dataset", "size"]
    steps = [" ".join(r[5:-5]) for r in rows]
    assert steps == ["check", "check, cached", "Detectron2 load", "load in a run", "check + load on one parse (a run)",
                     "check's cost in a run (the difference)"] * 2
    assert {r[0] for r in rows} == {"coco_2017_train", "lvis_v1_train"}
    assert all(r[-5] != "failed" for r in rows), rows
    assert all(r[-4] == "-" for r in rows), rows  # one run of each step: no spread
    _, rows = _table(out, "Sweep submission")
    assert [" ".join(r[2:-3]) for r in rows] == ["dry run", "submit (debug)", "resubmit"]
    assert all(r[0] == "4" and r[-3] != "failed" for r in rows), rows
    _, rows = _table(out, "Memory bank")
    assert [r[0] for r in rows] == ["search", "k-means"] and all("failed" not in r for r in rows), rows
    _, rows = _table(out, "MI estimate")
    assert [r[1] for r in rows] == ["class:color", "simclr"] and all("failed" not in r for r in rows), rows
    _, rows = _table(out, "Report")
    assert [r[0] for r in rows] == ["40", "40"] and all("failed" not in r for r in rows), rows


def test_bench_scale_usage_errors(capsys):
    tool = load_tool("bench_scale")
    with pytest.raises(SystemExit) as stop:
        tool.main(["--runs", "0"])
    assert stop.value.code == 2 and "bench_scale: error: --runs" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        tool.main(["--repeat", "0"])
    assert stop.value.code == 2 and "bench_scale: error: --repeat" in capsys.readouterr().err


def test_dataset_rows_show_the_median_run_and_the_spread():
    from transfer.bench.isolated import Measurement
    from transfer.bench.scale_datasets import summarize

    runs = [Measurement(s, 100.0 + s, 50.0) for s in (9.0, 4.0, 7.0, 5.0)]
    median, spread = summarize(runs)
    assert (median.seconds, median.peak_mb, spread) == (5.0, 105.0, 5.0)  # lower middle of 4, 5, 7, 9
    assert summarize(runs[:3]) == (runs[2], 5.0) and summarize(runs[:1]) == (runs[0], None)
    failed = Measurement(0.0, 0.0, 0.0, error="RuntimeError: x")
    assert summarize([runs[0], failed]) == (failed, None)


@pytest.mark.slow
def test_bench_transfer_quick_prints_both_trainers(capsys):
    tool = load_tool("bench_transfer")
    assert tool.main(["--quick"]) == 0
    out = capsys.readouterr().out
    assert "project (transfer.training.trainer.TransferTrainer)" in out
    assert "Detectron2 DefaultTrainer" in out
    assert "Detectron2 DefaultTrainer, project's loader" in out
    ratio = [line for line in out.splitlines() if line.startswith("project / Detectron2: ")]
    assert len(ratio) == 1 and ratio[0].endswith("x")
    same_batches = [line for line in out.splitlines() if line.startswith("project / Detectron2 with the project's ")]
    assert len(same_batches) == 1 and same_batches[0].endswith("x")


def test_repeated_dataset_steps_interleave_and_difference_per_round(monkeypatch):
    """--repeat: every round runs each step once (in the order of the table); the check's cost in a run is
    the median of the rounds' differences, not the difference of the medians."""
    from transfer.bench import scale_datasets
    from transfer.bench.isolated import Measurement

    calls = []
    times = {"_check": [2.0, 3.0, 4.0], "_load": [10.0, 11.0, 30.0], "_load_in_run": [7.0, 9.0, 8.0],
             "_check_and_load": [9.0, 9.5, 13.0]}

    def fake_run(target, *args, imports=()):
        name = target.__name__
        if name == "_check" and args[2] is not None:  # the cached check (and the call that fills the cache)
            return Measurement(0.01, 100.0, 90.0)
        calls.append(name)
        return Measurement(times[name][calls.count(name) - 1], 100.0, 90.0)

    monkeypatch.setattr(scale_datasets, "run_isolated", fake_run)
    monkeypatch.setattr(scale_datasets, "write_root", lambda work_dir, kind, fraction: (
        work_dir, {"images": 5, "annotations": 9, "bytes": 2**20}))
    rows = scale_datasets.bench_datasets([1.0], kinds=("coco",), repeats=3)
    assert calls == ["_check", "_load", "_load_in_run", "_check_and_load"] * 3
    by_step = {r[5]: r for r in rows}
    assert by_step["check"][6:8] == ("3.00", "2.00") and by_step["Detectron2 load"][6:8] == ("11.00", "20.00")
    # differences per round: 2.0, 0.5, 5.0 -> median 2.0 (the medians' difference would be 9.5 - 8.0 = 1.5)
    assert by_step["check's cost in a run (the difference)"][6:8] == ("2.00", "4.50")
    assert by_step["check's cost in a run (the difference)"][-1] == "0.182x"  # 2.0 / 11.0
