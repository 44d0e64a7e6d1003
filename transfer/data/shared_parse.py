"""A run's training data checked on Detectron2's own parse of it: the annotation file is read once.

Every training process loads its COCO or LVIS training set (``DatasetCatalog.get``: Detectron2's
``load_coco_json`` / ``load_lvis_json``, which parse the file with pycocotools' ``COCO`` or lvis' ``LVIS``).
A separate check before the run would parse the same file a second time. When ``tools/train_net.py``
finds a training set whose check is not cached, it leaves the check to the run's processes:
:func:`check_while_loading`, first thing in each process (before its output folder is written or a
model built),

1. parses the file whole (:func:`transfer.data.coco_json.parse_whole`: the json module, as pycocotools
   and lvis do, with Python's cyclic collector paused through all three steps, as for any loading in a
   run),
2. checks it (:func:`transfer.data.validate.dataset_summary` on the parsed data: the same checks and the
   same one-line errors as a check before the run, then what the config needs of it) and caches the
   summary,
3. runs Detectron2's own loading of the dataset, whose ``COCO(json_file)`` or ``LVIS(json_file)`` takes
   the parsed data instead of reading the file again (:func:`parsed_for_detectron2`), and hands the
   result to the trainer's first ``DatasetCatalog.get`` of the dataset.

The check then costs only what it adds to the loading (``tools/bench_scale.py`` measures it). Test sets
are checked before the run: they are loaded only for evaluation, after training.
"""
import contextlib
import os

__all__ = ["parsed_for_detectron2", "check_while_loading"]


def _same_file(a, b):
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


@contextlib.contextmanager
def parsed_for_detectron2(json_file, data):
    """Within: pycocotools' ``COCO(json_file)`` and lvis' ``LVIS(json_file)``, as Detectron2's loaders call
    them, take ``data`` (the file already parsed) instead of reading the file; other files are read."""
    import pycocotools.coco as coco_module

    # the classes below are freed by the cyclic collector only (a class refers to itself): they reach the
    # data through this list, emptied on the way out, so that it is freed as soon as Detectron2 is done
    held = [data]
    del data
    coco_original = coco_module.COCO

    class ParsedCOCO(coco_original):
        def __init__(self, annotation_file=None):
            if annotation_file is None or not _same_file(annotation_file, json_file):
                super().__init__(annotation_file)
                return
            super().__init__()
            if not isinstance(held[0], dict):
                raise ValueError(f"annotation file format {type(held[0])} not supported")
            self.dataset = held[0]
            self.createIndex()

    patched = [(coco_module, "COCO", coco_original)]
    coco_module.COCO = ParsedCOCO
    try:
        import lvis
    except ImportError:
        lvis = None
    if lvis is not None:
        lvis_original = lvis.LVIS

        class ParsedLVIS(lvis_original):
            def _load_json(self, path):
                return held[0] if _same_file(path, json_file) else super()._load_json(path)

        patched.append((lvis, "LVIS", lvis_original))
        lvis.LVIS = ParsedLVIS
    try:
        yield
    finally:
        for module, attr, original in patched:
            setattr(module, attr, original)
        held.clear()


def check_while_loading(cfg, names):
    """In this process, check training sets ``names`` (COCO or LVIS, registered) on the data Detectron2's
    loading of them parses (see the module's doc), and what ``cfg`` needs of them; then Detectron2's
    next ``DatasetCatalog.get`` of each returns what was loaded here (once; later calls load again). A
    dataset whose check is cached by now is only checked against ``cfg``. Raises
    :class:`~transfer.data.datasets.DatasetError` (one line) before anything is loaded further."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from transfer.data.coco_json import collector_paused, parse_whole
    from transfer.data.validate import cached_summary, check_training_data, dataset_summary

    train = list(cfg.DATASETS.TRAIN)
    for name in dict.fromkeys(names):
        first = bool(train) and train[0] == name
        summary = cached_summary(name)
        if summary is not None:
            check_training_data(cfg, name, summary, first)
            continue
        json_file = MetadataCatalog.get(name).json_file
        load = DatasetCatalog[name]
        with collector_paused():  # as a run's own loading (transfer.data.loader)
            data = parse_whole(json_file)
            check_training_data(cfg, name, dataset_summary(name, parsed=data), first)
            with parsed_for_detectron2(json_file, data):
                del data  # the COCO or LVIS object holds it while Detectron2 loads, and no longer
                dicts = load()
        DatasetCatalog.remove(name)
        DatasetCatalog.register(name, _hand_over(name, dicts, load))


def _hand_over(name, dicts, load):
    """A loading function that returns ``dicts`` once, then puts ``load`` back for later calls."""
    held = [dicts]

    def loaded():
        from detectron2.data import DatasetCatalog

        DatasetCatalog.remove(name)
        DatasetCatalog.register(name, load)
        return held.pop() if held else load()

    return loaded
