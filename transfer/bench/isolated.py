"""One measurement in a fresh process: the wall time of a call and the peak memory it needed.

Peak memory is the process's resident set high-water mark (``ru_maxrss``): :func:`run_isolated` starts a
new interpreter (multiprocessing's ``spawn``), imports what the call needs, reads the mark (the
baseline), runs the call once and reads the mark again. ``added`` = peak - baseline is what the call
itself needed; a process that already held a large structure would hide it, hence a fresh process per
measurement.
"""
import dataclasses
import importlib
import multiprocessing
import resource
import time
import traceback

__all__ = ["Measurement", "run_isolated"]


@dataclasses.dataclass
class Measurement:
    seconds: float
    peak_mb: float       # resident set high-water mark of the process
    baseline_mb: float   # the same mark before the call (after the imports)
    result: object = None
    error: str = None    # "Type: message" when the call raised

    @property
    def added_mb(self):
        return max(0.0, self.peak_mb - self.baseline_mb)


def _maxrss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kilobytes on Linux


def _child(conn, target, args, kwargs, imports):
    try:
        for name in imports:
            importlib.import_module(name)
        baseline = _maxrss_mb()
        start = time.perf_counter()
        try:
            result, error = target(*args, **kwargs), None
        except Exception as e:  # noqa: BLE001 - reported in the table, not raised
            result, error = None, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        seconds = time.perf_counter() - start
        conn.send(Measurement(seconds, _maxrss_mb(), baseline, result, error))
    except BaseException:  # noqa: BLE001 - the parent must hear of it
        conn.send(Measurement(0.0, 0.0, 0.0, None, traceback.format_exc().strip().splitlines()[-1]))
    finally:
        conn.close()


def run_isolated(target, *args, imports=(), timeout=None, **kwargs):
    """``target(*args, **kwargs)`` once in a fresh process (``target``: a module-level function); returns
    a :class:`Measurement` (``result``: what it returned, which must pickle)."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(child, target, args, kwargs, tuple(imports)), daemon=True)
    proc.start()
    child.close()
    try:
        if not parent.poll(timeout):
            raise TimeoutError(f"{getattr(target, '__name__', target)} took more than {timeout} s")
        return parent.recv()
    except EOFError:
        proc.join()
        return Measurement(0.0, 0.0, 0.0, None, f"the measuring process died (exit status {proc.exitcode})")
    finally:
        proc.join(30)
        if proc.is_alive():  # timed out, or stuck after answering
            proc.kill()
            proc.join()
