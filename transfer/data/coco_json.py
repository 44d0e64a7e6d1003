"""A full check of a COCO or LVIS annotation file at a small fraction of the cost of loading it.

Polygons are most of a COCO file (two thirds of its bytes, nine tenths of its numbers) and the check
needs only how many numbers each polygon has. :func:`read_annotation_json` therefore decodes the file
with msgspec against a schema of what the check reads (other fields are skipped without building
them) and keeps every polygon as its JSON text, which msgspec has checked is valid JSON; the polygons
are then measured on those texts with a few passes over their bytes (numbers per polygon: its commas
plus one). Files whose polygon lists hold anything but lists of numbers, and files the schema does not
fit (a broken file, a field of the wrong kind), are parsed whole with the json module instead: slower,
same result, and the error names the place. For a large file (:data:`HELPER_MIN_BYTES`) on Linux with two
CPUs or more, a forked helper process measures the polygons while this process decodes the file and checks
the other fields; the two take about as long, so the check takes about three quarters of the time.

:func:`check_coco_json` then checks every image record and every annotation with numpy over the
fields (ids, categories, boxes, keypoint lengths, polygons) and returns a summary of the facts that
training and evaluation need (:mod:`transfer.data.validate` decides with the config). Anything that
would make Detectron2's loader or mapper fail raises :class:`~transfer.data.datasets.DatasetError`
with one line naming the file and the first bad record.
"""
import contextlib
import gc
import itertools
import json
import mmap
import operator
import os
import pickle
import signal
import sys
import warnings
from typing import Any, Union

import msgspec
import numpy as np

from transfer.data.datasets import DatasetError, datasets_root

__all__ = ["read_annotation_json", "parse_whole", "check_coco_json", "polygon_lists", "collector_paused"]


@contextlib.contextmanager
def collector_paused():
    """Python's cyclic garbage collector paused within (and restored as it was after).

    Parsing or loading an annotation file builds millions of containers that hold no reference cycles;
    the collector would walk all of them again and again for nothing (pycocotools, lvis and Detectron2 leave
    it running: their loading of COCO train takes about twice as long). On the way out, what was built and
    is still alive goes straight to the collector's oldest generation, where it would end up anyway
    (``gc.freeze()`` then ``gc.unfreeze()``: nothing is walked), so that the next collections do not walk
    it all at once. Garbage is freed by reference counting as before; a reference cycle made within, at the
    next full collection."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            if gc.get_freeze_count() == 0:  # nobody else's frozen objects to thaw with ours
                gc.freeze()
                gc.unfreeze()
            gc.enable()


def _json_error(path, e):
    return DatasetError(f"{path} is not valid JSON: {' '.join(str(e).split())}")


class Annotation(msgspec.Struct, gc=False):
    """An annotation as :func:`read_annotation_json` decodes it: the fields the check reads, None where
    absent (``iscrowd`` and ``area``: ``msgspec.UNSET``, the check counts records without them). Ids are
    integers and a box four numbers: anything else does not decode, and the file is then parsed whole (the
    check names the record). ``area`` is kept as its JSON text, and so is a polygon list (``msgspec.Raw``;
    its polygons are measured by the read); any other segmentation is decoded. ``get`` reads a field as
    ``dict.get`` does."""
    id: Union[int, None] = None
    image_id: Union[int, None] = None
    category_id: Union[int, None] = None
    bbox: Union[tuple[float, float, float, float], None] = None
    iscrowd: Any = msgspec.UNSET
    ignore: Any = None
    area: msgspec.Raw = msgspec.UNSET
    keypoints: Any = None
    segmentation: msgspec.Raw = None

    def get(self, key, default=None):
        value = getattr(self, key, None)
        return default if value is None or value is msgspec.UNSET else value


class Image(msgspec.Struct, gc=False):
    """An image record as :func:`read_annotation_json` decodes it: the fields the check reads (sizes and id
    integers, else the file is parsed whole), None where absent; LVIS's category lists as their JSON texts."""
    id: Union[int, None] = None
    height: Union[int, None] = None
    width: Union[int, None] = None
    file_name: Any = None
    coco_url: Any = None
    neg_category_ids: msgspec.Raw = None
    not_exhaustive_category_ids: msgspec.Raw = None

    get = Annotation.get


class _Document(msgspec.Struct, gc=False):
    images: Union[list[Image], None] = None
    annotations: Union[list[Annotation], None] = None
    categories: Any = None


_DECODER = msgspec.json.Decoder(_Document)
_NUMBER_BYTES = b"0123456789.-+eE \t\r\n"  # and JSON whitespace: what a polygon's numbers are made of
_OPEN = ord("[")


def polygon_lists(text):
    """Polygon lists measured on their JSON text (one after another, each a valid JSON list, as msgspec
    decoded them): ``(owner, numbers)`` per polygon, the list it is in and its number of numbers; None
    unless every list holds only flat lists of numbers. A list of one number reads as an empty list and a
    polygon of 0 numbers as one of 1: the check's facts are the same (no valid polygon)."""
    marks = text.translate(None, _NUMBER_BYTES)  # "[[,,],[,]]": what is left of [[1,2,3],[4,5]]
    if marks.translate(None, b"[],"):
        return None  # a string, an object, true, false or null
    m = np.frombuffer(marks, np.uint8)
    at = np.flatnonzero(m != ord(","))  # the brackets
    opens = m[at] == _OPEN
    depth = np.cumsum(np.where(opens, 1, -1))  # after each bracket: 1 inside a list, 2 inside a polygon
    if depth.size and depth.max() > 2:
        return None  # a list deeper than a polygon
    commas = np.diff(at) - 1  # between a bracket and the next
    between_polygons = ~opens[:-1] & opens[1:]  # "],[" at depth 1; elsewhere at depth 1 no comma: no number
    if ((depth[:-1] == 1) & (commas != between_polygons)).any():
        return None
    polygon = opens & (depth == 2)
    owner = np.cumsum(opens & (depth == 1)) - 1
    return owner[polygon], commas[polygon[:-1]] + 1


def _joined(texts):
    """``(text, starts)``: the JSON texts joined into one bytearray, and where each one starts in it."""
    lengths = np.fromiter(map(len, texts), np.int64, len(texts))
    return bytearray().join(texts), np.cumsum(lengths) - lengths


def _measure_texts(raws):
    """``(lists, valid, invalid)`` of segmentation texts (``msgspec.Raw``, None where absent): per text, is
    it a list; per list, in order, its ``(valid, invalid)`` polygon counts. None where polygon lists hold
    anything but lists of numbers."""
    where = [i for i, r in enumerate(raws) if r is not None] if raws.count(None) else range(len(raws))
    present = raws if len(where) == len(raws) else [raws[i] for i in where]
    lists = np.zeros(len(raws), bool)
    if not present:
        return lists, np.zeros(0, np.int64), np.zeros(0, np.int64)
    text, starts = _joined(present)
    first_is_open = np.frombuffer(text, np.uint8)[starts] == _OPEN  # first characters
    for k in np.flatnonzero(~first_is_open).tolist():  # RLE dicts, numbers, strings, null: blanked out
        start = int(starts[k])  # (whitespace goes with the numbers): what is left are the lists, in order
        text[start:start + len(present[k])] = b" " * len(present[k])
    lists[where] = first_is_open
    measured = polygon_lists(text)
    if measured is None:
        return None
    return (lists,) + _valid_invalid(*measured, int(first_is_open.sum()))


class _SegmentationOnly(msgspec.Struct, gc=False):
    segmentation: msgspec.Raw = None


class _SegmentationsOnly(msgspec.Struct, gc=False):
    annotations: Union[list[_SegmentationOnly], None] = None


_SEGMENTATIONS_DECODER = msgspec.json.Decoder(_SegmentationsOnly)
HELPER_MIN_BYTES = 64 << 20  # files from this size have their polygons measured by a helper process


def _measure_in_helper(data):
    """What the helper computes: the annotations' segmentations decoded alone, and measured."""
    anns = _SEGMENTATIONS_DECODER.decode(data).annotations
    return _measure_texts(list(map(operator.attrgetter("segmentation"), anns)))


class _Helper:
    """A forked process that measures the polygons of a large file while this one decodes it (the two
    passes take about as long): on Linux with at least two CPUs for this process, else nothing. The
    helper decodes the same bytes, so its annotations are this process's, in the same order, and sends
    its answer pickled through a pipe; where it fails or dies, this process measures them itself."""

    def __init__(self, data):
        self.pid = self.reader = None
        if (len(data) < HELPER_MIN_BYTES or not sys.platform.startswith("linux")
                or len(os.sched_getaffinity(0)) < 2):
            return
        read_fd, write_fd = os.pipe()
        try:
            with warnings.catch_warnings():  # Python 3.12+ warns of forking with threads: the helper
                warnings.simplefilter("ignore", DeprecationWarning)  # takes no lock they could hold
                pid = os.fork()
        except OSError:  # no memory or processes left for it
            os.close(read_fd)
            os.close(write_fd)
            return
        if pid == 0:  # the helper: answer, then leave without running anything of its parent's
            status = 1
            try:  # a signal ends it, whatever handler its parent had set (a job's requeue on SIGUSR2)
                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2):
                    signal.signal(sig, signal.SIG_DFL)
                os.close(read_fd)
                with os.fdopen(write_fd, "wb") as out:
                    pickle.dump(_measure_in_helper(data), out, protocol=pickle.HIGHEST_PROTOCOL)
                status = 0
            finally:
                os._exit(status)
        os.close(write_fd)
        self.pid, self.reader = pid, os.fdopen(read_fd, "rb")

    def result(self, count):
        """``("measured", what _measure_texts gives)`` for ``count`` annotations, or None."""
        if self.pid is None:
            return None
        try:
            measured = pickle.load(self.reader)
        except Exception:  # noqa: BLE001 - it failed (nothing written) or died (a cut answer)
            return None
        finally:
            self.close()
        if measured is not None and not (isinstance(measured, tuple) and len(measured[0]) == count):
            return None
        return "measured", measured

    def close(self):
        if self.pid is not None:
            self.reader.close()
            os.kill(self.pid, signal.SIGKILL)  # done or not: it is reaped just below
            os.waitpid(self.pid, 0)
            self.pid = None


class _DecodedFile:
    """A file decoded against the check's schema (``data``: its parts, :class:`Annotation` and :class:`Image`
    records), or parsed whole with the json module where the schema does not fit (``stats`` then None).
    Its polygons are measured when :meth:`stats` is first asked, by the helper where it ran meanwhile."""

    def __init__(self, path):
        self.path, self.bytes = path, _read(path)
        self.helper = _Helper(self.bytes)
        try:
            with collector_paused():
                doc = _DECODER.decode(self.bytes)
        except msgspec.DecodeError:  # not JSON, or a field of another kind: the json module names the place
            self.helper.close()
            self.data, self.decoded = self.parse_whole(), False
            return
        self.decoded = True
        self.data = {key: value for key, value in (("images", doc.images), ("annotations", doc.annotations),
                                                   ("categories", doc.categories)) if value is not None}
        self._stats = None

    def stats(self):
        """Per polygon list (in the order of their annotations) ``(valid, invalid)`` polygon counts; other
        segmentations are decoded in place. None for a whole parse; ``WHOLE`` where polygon lists hold
        anything but lists of numbers (the file is to be parsed whole)."""
        if not self.decoded:
            return None
        anns = self.data.get("annotations")
        if self._stats is None and isinstance(anns, list) and anns:
            raws = _values(anns, "segmentation")
            answer = self.helper.result(len(raws))
            measured = answer[1] if answer is not None else _measure_texts(raws)
            if measured is None:
                self._stats = WHOLE
            else:
                lists, valid, invalid = measured
                for i in np.flatnonzero(~lists).tolist():
                    if raws[i] is not None:
                        anns[i].segmentation = msgspec.json.decode(raws[i])
                self._stats = valid, invalid
        self.helper.close()
        return self._stats

    def parse_whole(self):
        return _parse_json_module(self.path, self.bytes[:])  # the json module reads bytes, not a mapping


WHOLE = "parse the file whole"


def read_annotation_json(path):
    """``(data, stats)``: the parsed file and, per annotation whose segmentation is a polygon list (in the
    order of those annotations), ``(valid, invalid)`` polygon counts (valid: an even number of at least 6
    numbers, as Detectron2 keeps them). Decoded (:class:`Annotation` records, polygon lists as their JSON
    texts) where the file fits; else parsed whole with the json module (dicts, polygons parsed), stats None."""
    read = _DecodedFile(path)
    stats = read.stats()
    if stats is WHOLE:
        return read.parse_whole(), None
    return read.data, stats


# ------------------------------------------------------------------------------------------ checks

def _values(records, key):
    """``record.get(key)`` of every record: dicts, or the decoded :class:`Annotation` records (where an
    absent ``iscrowd`` or ``area`` reads ``msgspec.UNSET``, which is false)."""
    if _decoded(records):
        return list(map(operator.attrgetter(key), records))
    return [r.get(key) for r in records]


def _missing(records, key):
    """How many records have no ``key``."""
    if _decoded(records):
        return _values(records, key).count(msgspec.UNSET)
    return sum(1 for r in records if key not in r)


def _flags(records, key):
    """``bool(record.get(key))`` of every record."""
    values = _values(records, key)
    if values.count(None) + values.count(msgspec.UNSET) == len(values):  # none has it
        return np.zeros(len(values), bool)
    return np.fromiter(map(bool, values), bool, len(values))


def _decoded(records):
    return bool(records) and type(records[0]) in (Annotation, Image)  # then all are: the decoder made them


def _are_lists(records, key):
    """Per record: its ``key`` is a list."""
    values = _values(records, key)
    if not _decoded(records):
        return np.fromiter((isinstance(v, list) for v in values), bool, len(values))
    where = np.fromiter((v is not None for v in values), bool, len(values))
    text, starts = _joined(list(itertools.compress(values, where)))
    where[where] = np.frombuffer(text, np.uint8)[starts] == _OPEN
    return where


def _first(mask, records, what):
    """The first record where ``mask`` is set, described for the error line."""
    i = int(np.flatnonzero(mask)[0])
    rec = records[i]
    ident = rec.get("id") if isinstance(rec, (dict, Annotation, Image)) else None
    return f"{what} {ident!r}" if ident is not None else f"{what} #{i}"


def _int_field(records, key, path, what):
    values = _values(records, key)
    if not values:
        return np.zeros(0, np.int64)
    try:
        if _decoded(records):  # integers or None, as decoded
            return np.fromiter(values, np.int64, len(values))
        arr = np.array(values)
        if arr.dtype.kind == "i" and arr.shape == (len(values),):
            return arr
    except (ValueError, OverflowError, TypeError):
        pass
    bad = np.array([type(v) is not int or not -2**63 <= v < 2**63 for v in values])
    problem = "has no" if values[int(np.flatnonzero(bad)[0])] is None else "has a non-integer"
    raise DatasetError(f"{path}: {_first(bad, records, what)} {problem} '{key}'")


def _images(data, path, lvis, image_root):
    images = data["images"]
    bad = np.zeros(len(images), bool) if _decoded(images) else np.array([not isinstance(img, dict) for img in images])
    if bad.any():
        raise DatasetError(f"{path}: image #{int(np.flatnonzero(bad)[0])} is not an object")
    ids = _int_field(images, "id", path, "image")
    for key in ("height", "width"):
        sizes = _int_field(images, key, path, "image")
        if (sizes <= 0).any():
            raise DatasetError(f"{path}: {_first(sizes <= 0, images, 'image')} has '{key}' {sizes[sizes <= 0][0]}")
    name_key = "coco_url" if lvis else "file_name"
    names = _values(images, name_key)
    bad = np.array([not isinstance(n, str) or not n for n in names])
    if bad.any():
        raise DatasetError(f"{path}: {_first(bad, images, 'image')} has no '{name_key}'")
    by_folder = None  # {folder: [file name]}, where known here
    if lvis:  # Detectron2: image_root + <split folder of coco_url>/<file name>
        files = [image_root + "/".join(n.split("/")[-2:]) if "/" in n else image_root + n for n in names]
    elif "/" not in "\n".join(names):  # os.path.join(image_root, name), all in one folder
        prefix = image_root if not image_root or image_root.endswith("/") else image_root + "/"
        files = list(map(prefix.__add__, names))
        by_folder = {os.path.split(files[0])[0]: names}
    else:
        files = [os.path.join(image_root, n) for n in names]
    return ids, files, by_folder


def _check_files_exist(files, path, check=True, by_folder=None):
    """Every image file exists: one directory listing per folder, no stat per file. Returns the folders.
    ``by_folder``: the files' names grouped by folder, when the caller knows them."""
    if by_folder is None:
        by_folder = {}
        for f in files:
            folder, slash, name = f.rpartition("/")  # os.path.split's, at a third of the cost:
            if folder.endswith("/") or (slash and not folder):  # but for repeated or leading slashes
                folder = os.path.split(f)[0]
            by_folder.setdefault(folder, []).append(name)
    if not check:
        return sorted(by_folder)
    missing = []
    for folder, names in by_folder.items():
        try:
            with os.scandir(folder or ".") as it:
                present = {e.name for e in it}
        except OSError:
            present = set()
        missing += [os.path.join(folder, n) for n in names if n not in present]
    if missing:
        more = f" (and {len(missing) - 1} more of the {len(files)} images listed in {path})" if len(missing) > 1 \
            else f" (listed in {path})"
        raise DatasetError(f"image file not found: {missing[0]}{more}; datasets root: {datasets_root()}")
    return sorted(by_folder)


_SEG_KIND = {int: 0, list: 1, msgspec.Raw: 1, dict: 2, type(None): 4}  # 3: anything else; Raw: a decoded polygon list


def _polygon_stats(seg_lists, numbers):
    """``(valid, invalid)`` polygon counts per polygon list, from the numbers of each of their polygons in
    order (-1: not a list of numbers); valid: an even number of at least 6, as Detectron2 keeps them."""
    owner = np.repeat(np.arange(len(seg_lists)), np.fromiter(map(len, seg_lists), np.int64, len(seg_lists)))
    return _valid_invalid(owner, numbers, len(seg_lists))


def _valid_invalid(owner, numbers, count):
    """``(valid, invalid)`` polygons per list, from each polygon's list and its number of numbers."""
    ok = (numbers >= 6) & (numbers % 2 == 0)
    return np.bincount(owner[ok], minlength=count), np.bincount(owner[~ok], minlength=count)


def _segmentation_facts(anns, stats, path, lvis):
    """Per annotation: usable mask (>= 1 valid polygon, or an RLE dict), has a segmentation, every polygon
    valid (LVIS needs that). Polygon lists take their counts from ``stats`` where the read measured them."""
    segs = _values(anns, "segmentation")
    kind = np.fromiter(map(_SEG_KIND.get, map(type, segs), itertools.repeat(3)), np.int8, len(segs))
    n = len(anns)
    usable, all_valid = np.zeros(n, bool), np.zeros(n, bool)
    for i in np.flatnonzero((kind == 0) | (kind == 3)).tolist():
        if segs[i]:  # Detectron2 would iterate over it as polygons and fail
            raise DatasetError(f"{path}: annotation {anns[i].get('id')!r} has a malformed segmentation "
                               f"{segs[i]!r} (polygons [[x, y, ...], ...] or RLE {{'counts', 'size'}})")
        kind[i] = 4  # 0, "", false: Detectron2 reads it as no segmentation
    has_key = kind != 4
    for i in np.flatnonzero(kind == 2).tolist():
        seg = segs[i]
        size = seg.get("size")
        ok = "counts" in seg and isinstance(size, list) and len(size) == 2
        if not ok and not lvis:
            raise DatasetError(f"{path}: annotation {anns[i].get('id')!r} has a malformed RLE segmentation "
                               "(needs 'counts' and 'size' [height, width])")
        usable[i] = ok
    lists = np.flatnonzero(kind == 1)
    if lists.size:
        if stats is None:  # polygons parsed: numbers per polygon, -1 for what is not a list
            seg_lists = [segs[i] for i in lists.tolist()]
            polygons = list(itertools.chain.from_iterable(seg_lists))
            if set(map(type, polygons)) <= {list}:
                numbers = np.fromiter(map(len, polygons), np.int64, len(polygons))
            else:
                numbers = np.array([len(p) if type(p) is list else -1 for p in polygons], np.int64)
            stats = _polygon_stats(seg_lists, numbers)
        valid, invalid = stats
        usable[lists] = valid > 0
        all_valid[lists] = (valid > 0) & (invalid == 0)
    return usable, has_key, all_valid


def _keypoint_lengths(anns, path):
    kps = _values(anns, "keypoints")
    if kps.count(None) == len(kps):
        return np.zeros(len(kps), bool), np.full(len(kps), -1)
    with_kp = np.array([k is not None for k in kps])
    lengths = np.array([len(k) if isinstance(k, list) else -1 for k in kps])
    bad = with_kp & ((lengths < 0) | (lengths % 3 != 0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DatasetError(f"{path}: annotation {anns[i].get('id')!r} has {lengths[i]} keypoint values "
                           "(expected 3 per keypoint: x, y, visibility)")
    return with_kp, lengths


def _read(path):
    """The file's bytes, mapped read-only where the file system allows it (the decode then reads the page
    cache itself: no copy of the file into this process, 0.2 s for COCO train with the file cached, more
    when it is not); else read. The polygon texts the decode keeps (``msgspec.Raw``) point into the mapping,
    which lives as long as they do. Replacing the file meanwhile (written elsewhere, then renamed) changes
    nothing here; cutting it short in place while the check runs ends the process (SIGBUS), as it would a
    reader of a memory-mapped file in any program."""
    try:
        with open(path, "rb") as f:
            try:
                return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            except (OSError, ValueError):  # an empty file, or a file system without mmap
                return f.read()
    except OSError as e:
        raise DatasetError(f"cannot read {path}: {e.strerror or e}") from None


def parse_whole(path):
    """The file parsed whole, polygons included, as pycocotools and lvis read it: the text, with the json
    module (orjson parses twice as fast but holds a copy of the document while it builds the objects:
    1.6 GB more at the peak for COCO train), with the cyclic collector paused while the objects are built
    (pycocotools leaves it running, which costs about a third of Detectron2's loading of COCO train)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise DatasetError(f"cannot read {path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise _json_error(path, e) from None
    return _parse_json_module(path, text)


def _parse_json_module(path, data):
    try:
        with collector_paused():
            return json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise _json_error(path, e) from None


def check_coco_json(path, image_root, lvis=False, expected_categories=None, expected_keypoints=None,
                    check_files=True, parsed=None):
    """Check a COCO (or LVIS) file completely; return its summary (see :mod:`transfer.data.validate`).

    ``expected_categories``: ``{id: name}`` of a builtin dataset's metadata (its json must have exactly
    these); ``expected_keypoints``: the builtin number of keypoints. ``check_files``: every listed image
    must exist under ``image_root``. ``parsed``: the file already parsed whole (:func:`parse_whole`), when
    the caller needs it anyway; else the check reads it itself, without parsing the polygons.
    """
    if not os.path.isfile(path):
        raise DatasetError(f"{'LVIS' if lvis else 'COCO'} annotation file not found: {path} "
                           f"(datasets root: {datasets_root()}; set DETECTRON2_DATASETS or see README)")
    args = (path, image_root, lvis, expected_categories, expected_keypoints, check_files)
    if parsed is not None:
        return _check_data(*args, parsed, None)
    read = _DecodedFile(path)
    try:
        return _check_data(*args, read.data, read)
    finally:
        read.helper.close()


def _check_data(path, image_root, lvis, expected_categories, expected_keypoints, check_files, data, read):
    """:func:`check_coco_json` of the file's ``data``: parsed whole, or decoded by ``read`` (a
    :class:`_DecodedFile`, which measures the polygons)."""
    if not isinstance(data, dict):
        raise DatasetError(f"{path} is not a COCO-style annotation file (top level is not an object)")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DatasetError(f"{path} has no '{key}' list; not a COCO-style annotation file")
    if not data["images"]:
        raise DatasetError(f"{path} lists no images")
    image_ids, files, by_folder = _images(data, path, lvis, image_root)

    cats = data["categories"]
    if not all(isinstance(c, dict) for c in cats):
        raise DatasetError(f"{path}: a category is not an object")
    cat_ids = _int_field(cats, "id", path, "category")
    names = [c.get("name") for c in cats]
    if expected_categories is not None:
        _compare_categories(path, dict(zip(cat_ids.tolist(), names)), expected_categories, lvis)

    anns = data["annotations"]
    bad = np.zeros(len(anns), bool) if _decoded(anns) else np.array([not isinstance(a, dict) for a in anns], bool)
    if bad.any():
        raise DatasetError(f"{path}: annotation #{int(np.flatnonzero(bad)[0])} is not an object")
    n = len(anns)
    ann_ids = _int_field(anns, "id", path, "annotation")
    ann_images = _int_field(anns, "image_id", path, "annotation")
    ann_cats = _int_field(anns, "category_id", path, "annotation")
    unknown = ~np.isin(ann_images, image_ids)
    if unknown.any():
        raise DatasetError(f"{path}: {_first(unknown, anns, 'annotation')} refers to unknown image "
                           f"{ann_images[unknown][0]}")
    unknown = ~np.isin(ann_cats, cat_ids)
    if unknown.any():
        raise DatasetError(f"{path}: {_first(unknown, anns, 'annotation')} refers to unknown category "
                           f"{ann_cats[unknown][0]} (not in the file's 'categories')")
    if n and _distinct(ann_ids) != n and (lvis or "minival" not in path):
        values, counts = np.unique(ann_ids, return_counts=True)
        raise DatasetError(f"{path}: annotation id {values[counts > 1][0]} is used more than once")
    _check_boxes(anns, path)
    crowd = _flags(anns, "iscrowd")
    if not lvis:
        ignore = _flags(anns, "ignore")
        if ignore.any():
            raise DatasetError(f"{path}: {_first(ignore, anns, 'annotation')} sets 'ignore', which "
                               "Detectron2 does not support")
    stats = read.stats() if read is not None else None  # measured meanwhile by the helper, if one ran
    if stats is WHOLE:
        return check_coco_json(path, image_root, lvis, expected_categories, expected_keypoints, check_files,
                               parsed=read.parse_whole())
    usable, has_seg, all_valid = _segmentation_facts(anns, stats, path, lvis)
    if lvis and n and not all_valid.all():
        raise DatasetError(f"{path}: {_first(~all_valid, anns, 'annotation')} has no segmentation or a "
                           "polygon with fewer than 3 points (Detectron2's LVIS loader needs every polygon valid)")
    with_kp, kp_len = _keypoint_lengths(anns, path)
    keypoints = _keypoint_count(path, anns, with_kp, kp_len, cats, expected_keypoints)
    folders = _check_files_exist(files, path, check_files, by_folder)
    noncrowd = ~crowd
    summary = {
        "images": len(files), "annotations": n,
        "categories": sorted([int(i), str(nm)] for i, nm in zip(cat_ids.tolist(), names)),
        "images_with_annotations": _distinct(ann_images[noncrowd]),
        "masks_all": bool(usable[noncrowd].all()),
        "segmentation_all": bool(has_seg.all()),
        "keypoints": keypoints,
        "keypoints_all": bool(with_kp[noncrowd].all()) if n else False,
        "first_has_keypoints": bool(with_kp[0]) if n else False,
        "missing_area": _missing(anns, "area"),
        "missing_iscrowd": _missing(anns, "iscrowd"),
        "sample_files": _sample(files),
        "image_folders": folders,
        "first_without_mask": _first_id(~usable & ~crowd, anns),
    }
    if lvis:
        summary["lvis_frequency_missing"] = [int(c.get("id")) for c in cats
                                             if c.get("frequency") not in ("r", "c", "f")][:5]
        summary["lvis_frequency_missing_count"] = sum(1 for c in cats if c.get("frequency") not in ("r", "c", "f"))
        summary["lvis_image_lists_missing"] = int(np.count_nonzero(
            ~(_are_lists(data["images"], "neg_category_ids") & _are_lists(data["images"], "not_exhaustive_category_ids"))))
    return summary


def _distinct(values):
    """How many different values: by sorting (numpy's ``unique`` hashes, four times slower here)."""
    if not values.size:
        return 0
    ordered = np.sort(values)
    return int(np.count_nonzero(ordered[1:] != ordered[:-1])) + 1


def _first_id(mask, anns):
    hits = np.flatnonzero(mask)
    return anns[int(hits[0])].get("id") if hits.size else None


def _sample(files, k=8):
    if len(files) <= k:
        return list(files)
    rng = np.random.default_rng(0)
    return [files[i] for i in sorted(rng.choice(len(files), k, replace=False).tolist())]


def _check_boxes(anns, path):
    boxes = _values(anns, "bbox")
    if _decoded(anns) and boxes.count(None) == 0:  # four finite numbers each: msgspec decodes no number
        return  # out of float's range (and JSON has no inf or nan), the file is then parsed whole
    try:
        arr = np.array(boxes)  # numbers only: strings or None give another dtype
        ok = not anns or (arr.dtype.kind in "if" and arr.shape == (len(anns), 4) and np.isfinite(arr).all())
    except (TypeError, ValueError):
        ok = False
    if ok:
        return
    for a, b in zip(anns, boxes):
        if b is None:
            raise DatasetError(f"{path}: annotation {a.get('id')!r} has no 'bbox'")
        if not (isinstance(b, (list, tuple)) and len(b) == 4 and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in b)):
            raise DatasetError(f"{path}: annotation {a.get('id')!r} has a malformed bbox {b!r}")


def _keypoint_count(path, anns, with_kp, lengths, cats, expected):
    """The number of keypoints per annotation (None without keypoints); every annotation agrees, and
    with the builtin metadata or the file's category keypoint names."""
    if not with_kp.any():
        return None
    named = {len(c["keypoints"]) for c in cats if isinstance(c.get("keypoints"), list) and c["keypoints"]}
    counts = lengths[with_kp] // 3
    want = expected if expected is not None else (named.pop() if len(named) == 1 else None)
    if want is None:
        values, freq = np.unique(counts, return_counts=True)
        want = int(values[np.argmax(freq)])
    wrong = with_kp & (lengths != 3 * want)
    if wrong.any():
        i = int(np.flatnonzero(wrong)[0])
        source = "Detectron2's metadata" if expected is not None else (
            "its category's keypoint names" if named or want != int(counts[0]) else "the other annotations")
        raise DatasetError(f"{path}: annotation {anns[i].get('id')!r} has {lengths[i] // 3} keypoints, "
                           f"{source} say {want}")
    return int(want)


def _compare_categories(path, found, expected, lvis):
    """A builtin dataset's json must have its categories (Detectron2 refuses other names or ids)."""
    if lvis:  # Detectron2 maps LVIS ids by position (id - 1) into its 1203 classes
        extra = sorted(i for i in found if i not in expected)
        if extra:
            raise DatasetError(f"{path}: category id {extra[0]} is not one of the {len(expected)} LVIS categories "
                               "Detectron2's builtin metadata has (ids 1 to %d)" % len(expected))
        return
    extra = sorted(i for i in found if expected.get(i) != found[i])
    if extra:
        i = extra[0]
        known = f" (Detectron2's name for id {i}: {expected[i]!r})" if i in expected else ""
        raise DatasetError(f"{path}: category {i} {found[i]!r} is not one of the {len(expected)} categories of "
                           f"Detectron2's builtin metadata for this dataset{known}; register your own data with "
                           "TRANSFER.COCO_DATASETS instead")
    absent = sorted(set(expected) - set(found))
    if absent:
        raise DatasetError(f"{path}: category {absent[0]} {expected[absent[0]]!r} of Detectron2's builtin "
                           f"metadata is missing from the file ({len(found)} of {len(expected)} categories)")
