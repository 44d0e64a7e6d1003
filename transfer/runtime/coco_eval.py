"""The COCO evaluation backend: faster-coco-eval when installed, else pycocotools.

Both compute the official COCO metrics; faster-coco-eval does it in C++ and is several times faster on
large sets. :func:`coco_eval_class` returns a class with pycocotools' ``COCOeval`` interface
(``params``, ``evaluate``, ``accumulate``, ``summarize``, ``stats``) that Detectron2's
``COCOEvaluator`` uses as its fast implementation.
"""
import importlib.util


def _faster_class():
    from faster_coco_eval import COCOeval_faster

    class FasterCOCOeval(COCOeval_faster):
        """faster-coco-eval over pycocotools ``COCO`` objects, as Detectron2 passes them."""

        def __init__(self, cocoGt=None, cocoDt=None, iouType="segm", **kwargs):
            # faster-coco-eval's own COCO has ``cat_img_map``; keypoint evaluation reads it
            for coco in (cocoGt, cocoDt):
                if coco is not None and not hasattr(coco, "cat_img_map"):
                    coco.cat_img_map = coco.catToImgs
            kwargs.setdefault("print_function", lambda *a, **k: None)
            super().__init__(cocoGt, cocoDt, iouType, **kwargs)

    return FasterCOCOeval


def has_faster_coco_eval():
    return importlib.util.find_spec("faster_coco_eval") is not None


def coco_eval_class(prefer_faster=True):
    """The fastest available COCOeval-compatible class."""
    if prefer_faster and has_faster_coco_eval():
        return _faster_class()
    from pycocotools.cocoeval import COCOeval

    return COCOeval
