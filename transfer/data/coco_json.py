"""A full check of a COCO or LVIS annotation file at a small fraction of the cost of loading it.

Polygons are most of a COCO file (two thirds of its bytes, nine tenths of its numbers) and the check
needs only how many numbers each polygon has. :func:`read_annotation_json` therefore cuts the polygon
lists out of the text before parsing (``"segmentation":[[...]]`` becomes ``"segmentation":0``),
measures them with numpy on the bytes (numbers per polygon; the characters and separators are valid
JSON numbers), and parses the rest with orjson (the standard json module without it). Files whose
polygons are not laid out as COCO and Detectron2 write them (compact, or with ``", "`` separators)
are parsed whole: slower, same result.

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
import os

import numpy as np

from transfer.data.datasets import DatasetError, datasets_root

__all__ = ["read_annotation_json", "parse_whole", "check_coco_json", "polygon_stats", "collector_paused"]

_KEYS = (b'"segmentation":[[', b'"segmentation": [[')
_PLACEHOLDER = 0
_CHUNK = 1 << 24
# the bytes of the joined polygon text, by class; and which class may follow which (JSON numbers,
# "],[" between the polygons of an annotation, "|" between annotations)
_DIGIT, _DOT, _MINUS, _PLUS, _EXP, _COMMA, _OPEN, _CLOSE, _BAR, _OTHER = range(10)
_CLASS = np.full(256, _OTHER, np.uint8)
_CLASS[48:58] = _DIGIT
for _ch, _cls in ((".", _DOT), ("-", _MINUS), ("+", _PLUS), ("e", _EXP), ("E", _EXP), (",", _COMMA),
                  ("[", _OPEN), ("]", _CLOSE), ("|", _BAR)):
    _CLASS[ord(_ch)] = _cls
_FOLLOW = {_DIGIT: (_DIGIT, _DOT, _EXP, _COMMA, _CLOSE, _BAR), _DOT: (_DIGIT,), _MINUS: (_DIGIT,),
           _PLUS: (_DIGIT,), _EXP: (_DIGIT, _MINUS, _PLUS), _COMMA: (_DIGIT, _MINUS, _OPEN),
           _OPEN: (_DIGIT, _MINUS, _CLOSE, _BAR), _CLOSE: (_COMMA,), _BAR: (_DIGIT, _MINUS, _CLOSE, _BAR)}
_ALLOWED = np.zeros(100, bool)
for _x, _ys in _FOLLOW.items():
    for _y in _ys:
        _ALLOWED[_x * 10 + _y] = True


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


def _loads(data):
    """orjson where installed (it refuses NaN and Infinity), else the json module."""
    try:
        import orjson
    except ImportError:
        orjson = json
    with collector_paused():
        return orjson.loads(data)


def _json_error(path, e):
    return DatasetError(f"{path} is not valid JSON: {' '.join(str(e).split())}")


def _cut_polygons(data):
    """``(rest, polygons)``: the text with every polygon list replaced by ``0``, and the lists' contents
    joined by ``|`` (``],[`` between the polygons of one annotation); None where the layout differs."""
    keys = [k for k in _KEYS if k in data]
    if len(keys) != 1:
        return None
    key = keys[0]
    pieces = data.split(key)
    head = pieces[0]
    parts = [p.partition(b"]]") for p in pieces[1:]]
    del pieces
    # a list without its end (a truncated file) leaves other characters in it, or the rest unparsable
    polygons = b"|".join([seg for seg, _, _ in parts])
    if b" " in polygons:
        polygons = polygons.replace(b" ", b"")
    if polygons.count(b"|") != len(parts) - 1:
        return None  # a "|" of the file's own: not JSON
    rest = (key[:-2] + b"0").join([head, *(tail for _, _, tail in parts)])
    return rest, polygons, len(parts)


def _chunks(polygons):
    """(start, end) of pieces of about 16 MB that end at an annotation boundary."""
    start, n = 0, len(polygons)
    while start < n:
        end = polygons.find(b"|", start + _CHUNK) if start + _CHUNK < n else -1
        end = n if end < 0 else end
        yield start, end
        start = end + 1


def polygon_stats(polygons, count):
    """Per annotation, from the joined polygon text: ``(valid, invalid)`` polygon counts (valid: an
    even number of at least 6 numbers, as Detectron2 keeps them); None if a number is malformed."""
    valid = np.zeros(count, np.int64)
    invalid = np.zeros(count, np.int64)
    first = 0
    for start, end in _chunks(polygons):
        # a "|" before and after: the chunk is whole annotations
        cls = _CLASS[np.frombuffer(b"|" + polygons[start:end] + b"|", np.uint8)]
        if not _ALLOWED[cls[:-1] * 10 + cls[1:]].all():
            return None
        a = cls[1:-1]
        n = a.size
        # a polygon ends at "]" (then "],[" and the next starts) or at "|" (the next annotation's starts)
        ends = np.flatnonzero((a == _CLOSE) | (a == _BAR))
        is_close = a[ends] == _CLOSE
        bars = ends[~is_close]
        if not np.array_equal(np.flatnonzero(a == _OPEN), ends[is_close] + 2):
            return None  # "[" and "]" only as "],[" between two polygons
        starts = np.concatenate([[0], ends + np.where(is_close, 3, 1)])
        ends = np.append(ends, n)
        # commas from a polygon's start to the next one's: its own, plus the one of "],["
        span = np.add.reduceat((a == _COMMA).view(np.uint8), np.minimum(starts, max(n - 1, 0)), dtype=np.int64) \
            if n else np.zeros(1, np.int64)
        numbers = span - np.append(is_close, False) + 1
        numbers[ends <= starts] = 0
        ok = (numbers >= 6) & (numbers % 2 == 0)
        owner = np.searchsorted(bars, starts, side="left")
        segments = bars.size + 1
        valid[first:first + segments] += np.bincount(owner[ok], minlength=segments)
        invalid[first:first + segments] += np.bincount(owner[~ok], minlength=segments)
        first += segments
    return valid, invalid


def read_annotation_json(path):
    """``(data, (valid, invalid) or None)``: the parsed file, with polygon lists replaced by 0 and
    counted per annotation (in the order of their annotations), or parsed whole (None)."""
    data = _read(path)
    cut = _cut_polygons(data)
    if cut is not None:
        rest, polygons, count = cut
        stats = polygon_stats(polygons, count)
        del polygons
        if stats is not None:
            try:
                parsed = _loads(rest)
            except ValueError:
                parsed = None  # cut in the wrong place (a key inside a string?): parse it whole
            if isinstance(parsed, dict) and _placeholders(parsed) == count:
                return parsed, stats
    return _parse(path, data), None


def _placeholders(parsed):
    anns = parsed.get("annotations")
    if not isinstance(anns, list) or not all(type(a) is dict for a in anns):
        return -1
    return [a.get("segmentation") for a in anns].count(_PLACEHOLDER)


# ------------------------------------------------------------------------------------------ checks

def _first(mask, records, what):
    """The first record where ``mask`` is set, described for the error line."""
    i = int(np.flatnonzero(mask)[0])
    rec = records[i]
    ident = rec.get("id") if isinstance(rec, dict) else None
    return f"{what} {ident!r}" if ident is not None else f"{what} #{i}"


def _int_field(records, key, path, what):
    values = [r.get(key) for r in records]
    try:
        arr = np.array(values)
        if arr.dtype.kind == "i" and arr.shape == (len(values),):
            return arr
    except (ValueError, OverflowError):
        pass
    bad = np.array([type(v) is not int or not -2**63 <= v < 2**63 for v in values])
    problem = "has no" if values[int(np.flatnonzero(bad)[0])] is None else "has a non-integer"
    raise DatasetError(f"{path}: {_first(bad, records, what)} {problem} '{key}'")


def _images(data, path, lvis, image_root):
    images = data["images"]
    bad = np.array([not isinstance(img, dict) for img in images])
    if bad.any():
        raise DatasetError(f"{path}: image #{int(np.flatnonzero(bad)[0])} is not an object")
    ids = _int_field(images, "id", path, "image")
    for key in ("height", "width"):
        sizes = _int_field(images, key, path, "image")
        if (sizes <= 0).any():
            raise DatasetError(f"{path}: {_first(sizes <= 0, images, 'image')} has '{key}' {sizes[sizes <= 0][0]}")
    name_key = "coco_url" if lvis else "file_name"
    names = [img.get(name_key) for img in images]
    bad = np.array([not isinstance(n, str) or not n for n in names])
    if bad.any():
        raise DatasetError(f"{path}: {_first(bad, images, 'image')} has no '{name_key}'")
    if lvis:  # Detectron2: image_root + <split folder of coco_url>/<file name>
        files = [image_root + "/".join(n.split("/")[-2:]) if "/" in n else image_root + n for n in names]
    else:
        files = [os.path.join(image_root, n) for n in names]
    return ids, files


def _check_files_exist(files, path, check=True):
    """Every image file exists: one directory listing per folder, no stat per file. Returns the folders."""
    by_folder = {}
    for f in files:
        folder, name = os.path.split(f)
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


_SEG_KIND = {int: 0, list: 1, dict: 2, type(None): 4}  # 3: anything else; 5: a cut polygon list


def _segmentation_facts(anns, stats, path, lvis):
    """Per annotation: usable mask (>= 1 valid polygon, or an RLE dict), has a segmentation, every polygon
    valid (LVIS needs that). Cut polygon lists (the placeholders) take their counts from ``stats``."""
    segs = [a.get("segmentation") for a in anns]
    kind = np.array([_SEG_KIND.get(type(seg), 3) for seg in segs], np.int8)
    n = len(anns)
    usable, all_valid = np.zeros(n, bool), np.zeros(n, bool)
    ints = np.flatnonzero(kind == 0)
    if stats is not None and ints.size == stats[0].size:  # every number is a placeholder of a cut list
        usable[ints] = stats[0] > 0
        all_valid[ints] = (stats[0] > 0) & (stats[1] == 0)
        kind[ints] = 5
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
    if lists.size:  # polygons parsed: valid ones (an even number of at least 6 numbers) per annotation
        seg_lists = [segs[i] for i in lists.tolist()]
        per = np.fromiter(map(len, seg_lists), np.int64, lists.size)
        polygons = list(itertools.chain.from_iterable(seg_lists))
        if set(map(type, polygons)) <= {list}:
            numbers = np.fromiter(map(len, polygons), np.int64, len(polygons))
            good = (numbers >= 6) & (numbers % 2 == 0)
        else:
            good = np.array([type(p) is list and len(p) >= 6 and len(p) % 2 == 0 for p in polygons], bool)
        valid = np.bincount(np.repeat(np.arange(lists.size), per)[good], minlength=lists.size)
        usable[lists] = valid > 0
        all_valid[lists] = (per > 0) & (valid == per)
    return usable, has_key, all_valid


def _keypoint_lengths(anns, path):
    kps = [a.get("keypoints") for a in anns]
    with_kp = np.array([k is not None for k in kps])
    lengths = np.array([len(k) if isinstance(k, list) else -1 for k in kps])
    bad = with_kp & ((lengths < 0) | (lengths % 3 != 0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DatasetError(f"{path}: annotation {anns[i].get('id')!r} has {lengths[i]} keypoint values "
                           "(expected 3 per keypoint: x, y, visibility)")
    return with_kp, lengths


def _read(path):
    try:
        with open(path, "rb") as f:
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


def _parse(path, data):
    try:
        return _loads(data)
    except (ValueError, UnicodeDecodeError):
        return _parse_json_module(path, data)  # what orjson refuses and the json module reads: NaN, Infinity


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
    what = "LVIS" if lvis else "COCO"
    if not os.path.isfile(path):
        raise DatasetError(f"{what} annotation file not found: {path} "
                           f"(datasets root: {datasets_root()}; set DETECTRON2_DATASETS or see README)")
    data, stats = (parsed, None) if parsed is not None else read_annotation_json(path)
    if not isinstance(data, dict):
        raise DatasetError(f"{path} is not a COCO-style annotation file (top level is not an object)")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DatasetError(f"{path} has no '{key}' list; not a COCO-style annotation file")
    if not data["images"]:
        raise DatasetError(f"{path} lists no images")
    image_ids, files = _images(data, path, lvis, image_root)

    cats = data["categories"]
    if not all(isinstance(c, dict) for c in cats):
        raise DatasetError(f"{path}: a category is not an object")
    cat_ids = _int_field(cats, "id", path, "category")
    names = [c.get("name") for c in cats]
    if expected_categories is not None:
        _compare_categories(path, dict(zip(cat_ids.tolist(), names)), expected_categories, lvis)

    anns = data["annotations"]
    bad = np.array([not isinstance(a, dict) for a in anns], bool)
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
    crowd = np.array([bool(a.get("iscrowd", 0)) for a in anns], bool)
    if not lvis:
        ignore = np.array([bool(a.get("ignore", 0)) for a in anns], bool)
        if ignore.any():
            raise DatasetError(f"{path}: {_first(ignore, anns, 'annotation')} sets 'ignore', which "
                               "Detectron2 does not support")
    usable, has_seg, all_valid = _segmentation_facts(anns, stats, path, lvis)
    if lvis and n and not all_valid.all():
        raise DatasetError(f"{path}: {_first(~all_valid, anns, 'annotation')} has no segmentation or a "
                           "polygon with fewer than 3 points (Detectron2's LVIS loader needs every polygon valid)")
    with_kp, kp_len = _keypoint_lengths(anns, path)
    keypoints = _keypoint_count(path, anns, with_kp, kp_len, cats, expected_keypoints)
    folders = _check_files_exist(files, path, check_files)
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
        "missing_area": int(sum(1 for a in anns if "area" not in a)),
        "missing_iscrowd": int(sum(1 for a in anns if "iscrowd" not in a)),
        "sample_files": _sample(files),
        "image_folders": folders,
        "first_without_mask": _first_id(~usable & ~crowd, anns),
    }
    if lvis:
        summary["lvis_frequency_missing"] = [int(c.get("id")) for c in cats
                                             if c.get("frequency") not in ("r", "c", "f")][:5]
        summary["lvis_frequency_missing_count"] = sum(1 for c in cats if c.get("frequency") not in ("r", "c", "f"))
        summary["lvis_image_lists_missing"] = sum(
            1 for img in data["images"] if not isinstance(img.get("neg_category_ids"), list)
            or not isinstance(img.get("not_exhaustive_category_ids"), list))
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
    boxes = [a.get("bbox") for a in anns]
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
        if not (isinstance(b, list) and len(b) == 4 and all(
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
