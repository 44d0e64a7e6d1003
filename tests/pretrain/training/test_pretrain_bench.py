"""tools/bench_pretrain.py's library runs end to end (tiny; timings are never asserted)."""
import os

from pretrain.bench import bench_data, bench_loop, bench_step, format_table
from transfer.data.synthetic import write_synthetic


def test_bench_step_data_and_loop_run(tmp_path, monkeypatch):
    monkeypatch.setenv("SSL_D2_TRANSFER_CACHE", str(tmp_path / "cache"))
    rows = bench_step("resnet18", size=32, batch=4, queue=16, device="cpu", iters=1, warmup=1, rounds=1,
                      lightly=False)
    assert [r[0] for r in rows] == ["ours fp32", "ours fp32 channels_last", "ours default (timed choice)"]
    assert [r[1:3] for r in rows[:2]] == [("fp32", "NCHW"), ("fp32", "channels_last")]
    assert all(float(r[3]) > 0 for r in rows)
    assert os.listdir(tmp_path / "cache" / "numerics")  # the timed choice was cached
    write_synthetic(tmp_path, kinds=("imagenet",), num_images=4, seed=0)
    root = os.path.join(tmp_path, "imagenet", "train")
    rows = bench_data(root, size=32, num_images=4, rounds=1, lightly=False)
    assert [r[0] for r in rows] == ["ours moco_v2 (fast)", "ours moco_v2 (pil)", "ours infomin + JigSaw (fast)",
                                    "ours infomin + JigSaw (pil)"]
    table = format_table(("pipeline", "output", "images/s per worker", "vs lightly"), rows)
    assert table.splitlines()[0].startswith("pipeline") and len(table.splitlines()) == 6
    rows = bench_loop(root, size=32, batch=4, queue=16, workers=1, warmup=2, iters=2, lightly=False)
    assert [r[0] for r in rows] == ["ours"] and float(rows[0][1]) > 0 and rows[0][2] == "-"
