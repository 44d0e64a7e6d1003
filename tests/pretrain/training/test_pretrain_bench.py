"""tools/bench_pretrain.py's library runs end to end (tiny; timings are never asserted)."""
import os

from pretrain.bench import bench_data, bench_step, format_table
from transfer.data.synthetic import write_synthetic


def test_bench_step_and_data_run(tmp_path):
    rows = bench_step("resnet18", size=32, batch=4, queue=16, device="cpu", iters=1, warmup=1, rounds=1,
                      lightly=False)
    assert [r[0] for r in rows] == ["ours fp32", "ours fp32 channels_last", "ours default"]
    assert all(float(r[3]) > 0 for r in rows)
    write_synthetic(tmp_path, kinds=("imagenet",), num_images=2, seed=0)
    rows = bench_data(os.path.join(tmp_path, "imagenet", "train"), size=32, num_images=4, rounds=1, lightly=False)
    assert [r[0] for r in rows] == ["ours moco_v2", "ours infomin + JigSaw"]
    table = format_table(("pipeline", "output", "images/s per worker"), rows)
    assert table.splitlines()[0].startswith("pipeline") and len(table.splitlines()) == 4
