"""tools/bench_neighbours.py runs end to end on tiny banks and tables both backends (timings never asserted)."""

import pytest
import torch

from pretrain.methods.neighbours import have_faiss
from tool_loader import load_tool


def bench_tool():
    return load_tool("bench_neighbours")


def table_rows(text):
    lines = text.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("op "))
    assert set(lines[head + 1].replace(" ", "")) == {"-"}
    return [line.split(None, 5) for line in lines[head + 2:] if line.strip()]


def test_bench_tables_both_backends(capsys):
    tool = bench_tool()
    assert tool.main(["--sizes", "600", "1200", "--k", "32", "--clusters", "4", "10", "--iters", "3",
                      "--repeats", "1", "--queries", "8", "--dim", "16"]) == 0
    rows = table_rows(capsys.readouterr().out)
    backends = ["torch-cpu"] + (["faiss-cpu"] if have_faiss() else [])
    expected = [("search", n, "32", b) for n in ("600", "1200") for b in backends]
    expected += [("kmeans", n, k, b) for n in ("600", "1200") for k in ("4", "10") for b in backends]
    assert [tuple(r[:4]) for r in rows] == expected
    assert all(float(r[4]) >= 0 for r in rows)
    for row in rows:
        if row[0] == "search" and row[3] == "faiss-cpu":
            # exact search of the same data: the sets agree up to float rounding at the k-th neighbour
            same, total = row[5].split()[2].split("/")
            assert int(total) == 8 and int(same) >= 7
        if row[0] == "kmeans":
            assert float(row[5].split()[1]) > 0
    if have_faiss():
        inertias = {(r[1], r[2], r[3]): float(r[5].split()[1]) for r in rows if r[0] == "kmeans"}
        for (n, k, b), value in inertias.items():
            if b == "faiss-cpu":
                ref = inertias[(n, k, "torch-cpu")]
                assert abs(value - ref) / ref < 0.1  # two Lloyd runs from different seeds end close


def test_bench_inertia_matches_a_direct_computation():
    tool = bench_tool()
    x = torch.randn(50, 3)
    cent = torch.randn(4, 3)
    assign = torch.cdist(x, cent).argmin(1)
    direct = sum(float(((x[i] - cent[assign[i]]) ** 2).sum()) for i in range(50))
    assert tool.inertia(x, assign, cent, chunk=7) == pytest.approx(direct, rel=1e-5)


def test_bench_without_faiss_has_torch_rows_only(capsys, monkeypatch):
    from pretrain.methods import neighbours
    tool = bench_tool()
    monkeypatch.setattr(neighbours, "have_faiss", lambda: False)
    assert tool.main(["--sizes", "300", "--k", "8", "--clusters", "5", "--iters", "2", "--repeats", "1",
                      "--queries", "4", "--dim", "8"]) == 0
    out = capsys.readouterr().out
    assert "faiss: not installed" in out
    assert [tuple(r[:4]) for r in table_rows(out)] == [("search", "300", "8", "torch-cpu"),
                                                        ("kmeans", "300", "5", "torch-cpu")]
