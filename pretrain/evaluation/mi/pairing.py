"""What makes a pair: the ``--pairing`` spec, joint classes of label columns, their entropy, the pair source.

``simclr`` pairs two augmented views of one image; ``class:<attr>[+<attr>...]`` pairs two images with the
same values of those label columns (``class`` and ``class:all``: every column). The true MI of same-class
pairs is at most ``H(C)`` (Lee et al., Proposition III.1); :func:`entropy_bits` gives it.
"""
import torch

from pretrain.evaluation.mi.bound import MIError
from pretrain.evaluation.mi.pairs import MIN_PER_CLASS, ClassPairs, ViewPairs

__all__ = ["Pairing", "parse_pairing", "class_ids", "entropy_bits", "select_classes", "build_pairs"]


class Pairing:
    """A parsed ``--pairing``: ``kind`` ``"simclr"`` or ``"class"``; ``attributes`` (class pairing) the label
    columns whose joint value defines the class."""

    def __init__(self, kind, attributes=()):
        self.kind = kind
        self.attributes = list(attributes)

    @property
    def spec(self):
        return "simclr" if self.kind == "simclr" else "class:" + "+".join(self.attributes)

    def __repr__(self):
        return f"Pairing({self.spec!r})"


def parse_pairing(spec, attributes=None):
    """``simclr``, ``class`` (every attribute), ``class:all`` or ``class:a+b`` (those attributes of the data,
    e.g. ``class:color+digit`` for CDP; also comma-separated). ``attributes``: the data's attribute names
    (checked when given; needed to expand ``all``)."""
    spec = str(spec).strip()
    if spec == "simclr":
        return Pairing("simclr")
    kind, _, rest = spec.partition(":")
    if kind != "class":
        raise MIError(f"unknown pairing {spec!r}; use simclr, class, class:all or class:<attr>[+<attr>...]")
    names = [n.strip() for n in rest.replace(",", "+").split("+") if n.strip()]
    if not names or names == ["all"]:
        if attributes is None:
            raise MIError(f"pairing {spec!r} needs the data's attribute names to expand")
        return Pairing("class", attributes)
    if len(set(names)) != len(names):
        raise MIError(f"pairing {spec!r} names an attribute twice")
    if attributes is not None:
        unknown = [n for n in names if n not in attributes]
        if unknown:
            raise MIError(f"pairing {spec!r}: the data has no attribute {unknown[0]!r} "
                          f"(it has: {', '.join(attributes)}; or use class:all)")
        names = [a for a in attributes if a in names]  # the data's column order
    return Pairing("class", names)


def class_ids(labels, columns):
    """Joint class id (0..M-1, in sorted order of the label tuples) of the chosen columns of ``labels``
    (N x A integer tensor); returns ``(ids, num_classes)``."""
    labels = torch.as_tensor(labels, dtype=torch.long)
    if labels.ndim == 1:
        labels = labels[:, None]
    chosen = labels[:, list(columns)]
    _, ids = torch.unique(chosen, dim=0, return_inverse=True)
    return ids, int(ids.max()) + 1 if len(ids) else 0


def entropy_bits(ids):
    """Empirical (plug-in) entropy of integer class ids, in bits."""
    counts = torch.bincount(torch.as_tensor(ids, dtype=torch.long).flatten()).double()
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log2()).sum())



def select_classes(dataset, pairing, *, min_per_class=MIN_PER_CLASS):
    """Same-class pairing over a labelled dataset (``attributes``, ``labels``): ``(keep, ids, info)`` with
    ``keep`` the images used (classes of fewer than ``min_per_class`` images are left out, with a warning in
    ``info``), ``ids`` their joint class ids (0..M-1) and ``info`` the class count and entropy. Raises
    :class:`MIError` when fewer than two classes remain. Reads labels only, no image."""
    columns = [dataset.attributes.index(a) for a in pairing.attributes]
    ids, _ = class_ids(dataset.labels, columns)
    counts = torch.bincount(ids)
    keep_class = counts >= min_per_class
    warnings = []
    if not bool(keep_class.all()):
        dropped = int((~keep_class & (counts > 0)).sum())
        warnings.append(f"{dropped} of {len(counts)} classes have fewer than {min_per_class} images and are left out")
    if int(keep_class.sum()) < 2:
        raise MIError(f"pairing {pairing.spec}: fewer than 2 classes with at least {min_per_class} images each; "
                      "same-class pairing needs more images per class")
    keep = keep_class[ids]
    ids, num_classes = class_ids(ids[keep], [0])
    probs = torch.bincount(ids).double() / len(ids)
    info = {"class_attributes": list(pairing.attributes), "num_classes": num_classes, "num_images": int(keep.sum()),
            "class_entropy_bits": entropy_bits(ids), "class_probs": probs.tolist(), "warnings": warnings}
    return keep, ids, info


def build_pairs(dataset, pairing, features, *, min_per_class=MIN_PER_CLASS):
    """The pair source and a description for ``pairing`` over ``dataset`` (a labelled dataset with
    ``attributes`` and ``labels``) and its ``features`` (N x D, or N x V x D for simclr); class pairing
    goes through :func:`select_classes`."""
    info = {"pairing": pairing.spec, "pairing_kind": pairing.kind}
    if pairing.kind == "simclr":
        info.update(num_images=int(features.shape[0]), warnings=[])
        return ViewPairs(features), info
    keep, ids, selected = select_classes(dataset, pairing, min_per_class=min_per_class)
    info.update(selected)
    return ClassPairs(features[keep], ids), info

