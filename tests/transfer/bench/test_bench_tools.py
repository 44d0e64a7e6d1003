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
    assert tool.main(["--quick", "--repeat", "2", "--work-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("machine: ")
    header, rows = _table(out, "Datasets:")
    assert header[:2] == ["dataset", "size"]
    steps = [" ".join(r[5:-5]) for r in rows]
    assert steps == ["check", "check, cached", "Detectron2 load", "load in a run", "check + load on one parse (a run)",
                     "check's cost in a run (the difference)"] * 2
    assert {r[0] for r in rows} == {"coco_2017_train", "lvis_v1_train"}
    assert all(r[-5] != "failed" for r in rows), rows
    # two runs of each step but the cached check: a spread (slowest minus fastest) beside the median
    assert [r[-4] == "-" for r in rows] == [False, True, False, False, False, False] * 2, rows
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
