"""Reading the fields of a sweep file: names, KEY VALUE overrides, paths, mappings; errors as :class:`SweepError`.

Shared by the grid sections (:mod:`transfer.launch.sweep_file`) and the pretraining and evaluation
sections (:mod:`transfer.launch.pipeline`) so that both read and refuse values alike, in one line that
names the file and the key.
"""
import os
import re

from pretrain.common.paths import REPO_ROOT

__all__ = ["SweepError", "is_valid_name", "override_text", "read_overrides", "read_list", "read_path",
           "read_mapping", "read_config_entry"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


class SweepError(ValueError):
    """A sweep file, ledger or output root that cannot be used, explained in one line."""


def is_valid_name(name):
    """Sweep, backbone and evaluation names are letters, digits and ``_.+-`` (they name folders)."""
    return bool(_NAME.match(str(name)))


def override_text(value):
    """YAML gives numbers, booleans and lists; the command line is text (the configs parse it)."""
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, (list, tuple)):
        return "(" + ",".join(override_text(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    return str(value)


def read_overrides(value, where):
    """A list of KEY, VALUE pairs (None: none) as a tuple of texts."""
    value = value or []
    if not isinstance(value, list) or len(value) % 2:
        got = f"{len(value)} item(s)" if isinstance(value, list) else type(value).__name__
        raise SweepError(f"{where}: 'overrides' must be a list of KEY, VALUE pairs (got {got})")
    return tuple(override_text(v) for v in value)


def read_list(data, key, where, kind):
    """``data[key]`` as a non-empty list (a single value becomes a list of one)."""
    value = data.get(key)
    if value is None or value == []:
        raise SweepError(f"{where}: '{key}' is missing or empty (a list of {kind})")
    if not isinstance(value, list):
        value = [value]
    return value


def read_path(value, where):
    """An absolute path: relative paths are taken from the working directory, or else (configs shipped
    with the project, e.g. configs/pretrain/ir_R_18.yaml) from the project's root."""
    if not isinstance(value, str) or not value:
        raise SweepError(f"{where}: expected a file or folder path, got {value!r}")
    if os.path.isabs(value):
        return value
    here = os.path.abspath(value)
    shipped = os.path.join(REPO_ROOT, value)
    return shipped if not os.path.exists(here) and os.path.exists(shipped) else here


def read_mapping(value, where, keys):
    """A mapping whose keys are among ``keys`` (None: empty)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SweepError(f"{where}: expected a mapping with keys {', '.join(keys)}")
    unknown = sorted(set(map(str, value)) - set(keys))
    if unknown:
        raise SweepError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(keys)}")
    return value


def read_config_entry(value, where, what):
    """``(config path, overrides)`` of a ``name: FILE`` or ``name: {config: FILE, overrides: [...]}`` entry."""
    if isinstance(value, str):
        value = {"config": value}
    value = read_mapping(value, where, ("config", "overrides"))
    config = read_path(value.get("config"), f"{where}: config")
    if not os.path.isfile(config):
        raise SweepError(f"{where}: {what} config not found: {value.get('config')}")
    return config, read_overrides(value.get("overrides"), where)
