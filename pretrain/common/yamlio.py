"""Strict YAML reading: a key given twice in one mapping is an error naming file and line.

YAML itself silently keeps the last of two duplicate keys, so a setting can vanish without a word (a
known trap in SSL benchmark configs). Every config and sweep file of the project is read through here.
"""
import yaml


class DuplicateKeyError(ValueError):
    """A mapping holds the same key twice; the message names file, line and key."""


class _StrictLoader(yaml.SafeLoader):
    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise DuplicateKeyError(
                    f"{self.name}:{key_node.start_mark.line + 1}: duplicate key '{key}' "
                    f"(first at line {seen[key] + 1}); YAML would silently keep only the last one")
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def load_yaml(path):
    """The YAML document in ``path`` (safe types only); DuplicateKeyError or yaml.YAMLError on failure."""
    with open(path) as f:
        loader = _StrictLoader(f)
        loader.name = path
        try:
            return loader.get_single_data()
        finally:
            loader.dispose()


def read_yaml(path, error=ValueError):
    """:func:`load_yaml`, with a duplicate key or invalid YAML raised as ``error`` (one line naming the
    file, and the line where YAML can tell)."""
    try:
        return load_yaml(path)
    except DuplicateKeyError as e:
        raise error(str(e)) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise error(f"{path}: not valid YAML{f' (line {mark.line + 1})' if mark else ''}") from None
