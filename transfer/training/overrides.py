"""Config keys and values a user typed, checked before anything runs: one line per mistake, with a hint.

Detectron2's ``merge_from_list`` / ``merge_from_file`` answer an unknown key or a value of the wrong type
with an ``AssertionError`` / ``ValueError`` traceback. :func:`check_overrides` checks the command line's
``KEY VALUE`` pairs one at a time against a config and :func:`merge_file` wraps a config file's merge, so
that every such mistake is a :class:`ValueError` subclass (the caller's ``ConfigError``) with one line
naming the key, the value and the expected type, and for an unknown key the closest existing key
(``difflib``).
"""
import difflib
import re

from detectron2.config import CfgNode as CN

__all__ = ["all_keys", "closest_key", "lookup_key", "check_overrides", "merge_file"]

_MISSING = re.compile(r"Non-existent (?:config )?key: (\S+)")
_MISMATCH = re.compile(r"Type mismatch \((<class '(\w+)'>) vs\. (<class '(\w+)'>)\)")


def all_keys(cfg, prefix=""):
    """Every dotted leaf key of a config node."""
    keys = []
    for name, value in cfg.items():
        if isinstance(value, CN):
            keys += all_keys(value, f"{prefix}{name}.")
        else:
            keys.append(f"{prefix}{name}")
    return keys


def closest_key(cfg, key):
    """The existing key most like ``key`` (same leaf name elsewhere, or a near spelling), or None."""
    keys = all_keys(cfg)
    parent, _, leaf = key.upper().rpartition(".")
    same_leaf = [k for k in keys if k.rsplit(".", 1)[-1] == leaf]
    if len(same_leaf) == 1:
        return same_leaf[0]
    siblings = {k.rsplit(".", 1)[-1]: k for k in keys if k.rpartition(".")[0] == parent}
    found = difflib.get_close_matches(leaf, list(siblings), n=1, cutoff=0.7)
    if found:
        return siblings[found[0]]
    found = difflib.get_close_matches(key.upper(), keys, n=1, cutoff=0.85)
    return found[0] if found else None


def _unknown(cfg, key, where):
    hint = closest_key(cfg, key)
    return f"{where}unknown config key {key}" + (f" (did you mean {hint}?)" if hint else "")


def lookup_key(tree, key):
    """``(value, True)`` of the dotted ``key`` in a config or a nested dict (a CfgNode is a dict), or
    ``(None, False)`` when it is not there."""
    node = tree
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None, False
        node = node[part]
    return node, True


def _describe(value):
    name = type(value).__name__
    return ("an " if name[0] in "aeiou" else "a ") + name


def check_overrides(cfg, opts, error=ValueError):
    """Check ``KEY VALUE`` pairs against ``cfg`` (not modified); raise ``error`` with one line for the first
    odd count, unknown key or value Detectron2 would refuse."""
    opts = list(opts)
    if len(opts) % 2:
        raise error(f"command-line overrides must be KEY VALUE pairs; got {len(opts)} words (last: {opts[-1]!r})")
    for key, value in zip(opts[0::2], opts[1::2]):
        current, found = lookup_key(cfg, key)
        if not found:
            raise error(_unknown(cfg, key, "command line: "))
        if isinstance(current, CN):
            raise error(f"command line: {key} is a group of keys, not one key; name a key inside it")
        probe = cfg.clone()
        probe.defrost()
        try:
            probe.merge_from_list([key, value])
        except (KeyError, ValueError, AssertionError, TypeError, SyntaxError) as e:
            decoded = CN._decode_cfg_value(value) if isinstance(value, str) else value
            raise error(f"command line: bad value {value!r} for {key}: expected {_describe(current)} like "
                        f"{current!r}, got {_describe(decoded)}" + _why(e)) from None


def _why(exc):
    text = " ".join(str(exc).split())
    if not text or _MISMATCH.search(text):
        return ""
    return f" ({text[:160]})"


def merge_file(cfg, path, error=ValueError):
    """``cfg.merge_from_file(path)`` with an unknown key or a bad value as one line (``error``)."""
    try:
        cfg.merge_from_file(path)
    except (KeyError, AssertionError, ValueError, TypeError) as e:
        text = " ".join(str(e).split()).strip("'\"")
        missing = _MISSING.search(text)
        if missing:
            raise error(_unknown(cfg, missing.group(1), f"{path}: ")) from None
        raise error(f"{path}: {text[:200] or type(e).__name__}") from None
