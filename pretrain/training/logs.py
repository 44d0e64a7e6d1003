"""What a pretraining run reports as it goes: the console and ``log.txt``, ``metrics.jsonl`` and TensorBoard.

Formats in docs/artifacts.md. Only rank 0 writes files; the other processes log warnings to the console.
"""
import json
import logging
import os
import sys

from pretrain.common.runs import METRICS_FILE

__all__ = ["logger", "setup_logging", "progress_bar", "MetricsLog"]

logger = logging.getLogger("pretrain")


def setup_logging(output_dir, rank):
    """The ``pretrain`` logger: INFO on rank 0 (console and ``output_dir/log.txt``), WARNING elsewhere."""
    logger.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    logger.propagate = False
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    fmt = logging.Formatter(f"[%(asctime)s {'' if rank == 0 else f'rank{rank} '}%(name)s] %(message)s",
                            datefmt="%m/%d %H:%M:%S")
    stream = logging.StreamHandler(sys.stdout)
    stream.setFormatter(fmt)
    logger.addHandler(stream)
    if rank == 0:
        # opened at the first record: a run refused before it logs anything leaves no empty log.txt
        file = _LazyFileHandler(os.path.join(output_dir, "log.txt"))
        file.setFormatter(fmt)
        logger.addHandler(file)
    for name in ("pretrain.data.images", "pretrain.training.knn"):
        logging.getLogger(name).parent = logger


class _LazyFileHandler(logging.FileHandler):
    """``log.txt``, opened at the first record written once its folder exists (the run creates OUTPUT_DIR when it
    starts for real): a refused run, or a later record after its folder was removed, writes no file."""

    def __init__(self, path):
        super().__init__(path, delay=True)

    def emit(self, record):
        if self.stream is None and not os.path.isdir(os.path.dirname(self.baseFilename)):
            return
        super().emit(record)


class _TqdmStream:
    """A stream for the log handler that prints above tqdm's progress bar."""

    def write(self, text):
        from tqdm import tqdm

        if text.strip():
            tqdm.write(text.rstrip("\n"), file=sys.stdout)

    def flush(self):
        sys.stdout.flush()


def progress_bar(total, initial):
    """A tqdm bar on an interactive terminal, with the console log printed above it; None otherwise."""
    if not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    bar = tqdm(total=total, initial=initial, desc="pretrain", dynamic_ncols=True)
    for h in logger.handlers:  # log lines above the bar, not through it
        if type(h) is logging.StreamHandler:
            h.setStream(_TqdmStream())
    return bar


class MetricsLog:
    """``metrics.jsonl`` (one JSON object per line) and, if asked, TensorBoard scalars in ``output_dir``.

    A resumed run keeps the lines up to ``start_iter`` (those logged after its checkpoint are dropped, the
    run logs them again); a fresh run starts an empty file.
    """

    def __init__(self, output_dir, start_iter=0, resumed=False, tensorboard=False):
        self.path = os.path.join(output_dir, METRICS_FILE)
        self._keep_until(start_iter if resumed else None)
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(output_dir, purge_step=start_iter + 1 if start_iter else None)
            except Exception as e:  # noqa: BLE001 - monitoring must never stop training
                logger.warning(f"TensorBoard disabled: {e}")

    def _keep_until(self, last_iter):
        keep = []
        if last_iter is not None and os.path.isfile(self.path):
            with open(self.path) as f:
                for line in f:
                    try:
                        if json.loads(line).get("iter", 0) <= last_iter:
                            keep.append(line if line.endswith("\n") else line + "\n")
                    except json.JSONDecodeError:
                        continue
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(keep)
        os.replace(tmp, self.path)

    def write(self, record):
        """Append ``record`` (it has ``iter``); its numbers go to TensorBoard under ``pretrain/<key>``."""
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for key, value in record.items():
                if key != "iter" and isinstance(value, (int, float)) and value is not None:
                    self.tb.add_scalar(key if "/" in key else f"pretrain/{key}", value, record["iter"])

    def close(self):
        if self.tb is not None:
            self.tb.close()
