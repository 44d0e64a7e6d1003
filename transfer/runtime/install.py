"""Install a pure-Python Detectron2 0.6 when no Detectron2 is importable.

Production users build Detectron2 from source (compiled CUDA ops); this module then does nothing.
Elsewhere it fetches the ``pb1-detectron2==0.6`` sdist through pip (Python files byte-identical to
upstream v0.6, no C++ sources), checks it against a pinned sha256 and installs its ``detectron2``
package, without compiling anything, as a wheel named ``detectron2`` 0.6 that ``pip show`` lists and
``pip uninstall`` removes. The wheel holds what upstream's ``setup.py`` installs: the ``detectron2``
package with ``model_zoo/configs`` and the ``detectron2.projects.*`` packages mapped from ``projects/``.
The runtime fixes this pure-Python build needs live in :mod:`transfer.runtime.compat`.

Only the standard library is used here: this runs before Detectron2 exists.
"""
import base64
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile

SDIST_REQUIREMENT = "pb1-detectron2==0.6"
SDIST_SHA256 = "5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"
DIST_NAME = "detectron2"
DIST_VERSION = "0.6"
MIN_VERSION = (0, 6)

# upstream setup.py: package_dir for the projects it installs under detectron2.projects
PROJECTS = {
    "point_rend": "projects/PointRend/point_rend",
    "deeplab": "projects/DeepLab/deeplab",
    "panoptic_deeplab": "projects/Panoptic-DeepLab/panoptic_deeplab",
}
# what the package needs at import time (upstream's list, without pins that conflict with current
# releases and without tools that are only for developing Detectron2 itself)
REQUIRES = [
    "Pillow>=7.1", "matplotlib", "pycocotools>=2.0.2", "termcolor>=1.1", "yacs>=0.1.8", "tabulate",
    "cloudpickle", "tqdm>4.29.0", "tensorboard", "fvcore>=0.1.5", "iopath>=0.1.7", "omegaconf>=2.1",
    "hydra-core>=1.1",
]


class InstallError(RuntimeError):
    """A failure with a one-line explanation for the user."""


def _parse_version(text):
    parts = []
    for piece in text.split("+")[0].split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def installed_version(python=sys.executable):
    """Version string of the Detectron2 importable by ``python``, or None.

    Runs in a fresh interpreter so that this process's imports do not mask a broken install.
    """
    code = "import detectron2; print(detectron2.__version__)"
    proc = subprocess.run([python, "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        return None
    return proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else None


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(path, expected=SDIST_SHA256):
    actual = sha256_of(path)
    if actual != expected:
        raise InstallError(
            f"checksum mismatch for {path}: sha256 {actual}, expected {expected}; "
            "refusing to install it (delete the file and retry, or build Detectron2 from source)"
        )


def download_sdist(dest_dir, python=sys.executable):
    """Fetch the sdist with pip (no build isolation: its setup.py imports torch)."""
    cmd = [python, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           "--no-build-isolation", SDIST_REQUIREMENT, "-d", dest_dir]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = [f for f in os.listdir(dest_dir) if f.endswith((".tar.gz", ".zip"))]
    if proc.returncode != 0 or not found:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise InstallError(f"could not download {SDIST_REQUIREMENT} with pip: {tail[0]}")
    return os.path.join(dest_dir, found[0])


def _extract(sdist, dest_dir):
    try:
        with tarfile.open(sdist) as tar:
            tar.extractall(dest_dir, filter="data")
    except (tarfile.TarError, OSError, EOFError) as e:
        raise InstallError(f"cannot unpack {sdist}: {e}") from None
    roots = [os.path.join(dest_dir, d) for d in os.listdir(dest_dir)]
    roots = [d for d in roots if os.path.isdir(os.path.join(d, "detectron2"))]
    if len(roots) != 1:
        raise InstallError(f"{sdist} does not contain a detectron2 package")
    return roots[0]


def _wheel_files(src_root):
    """(archive name, file path) for every file the wheel holds."""
    def walk(top, prefix):
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
            for name in sorted(filenames):
                if name.endswith((".pyc", ".so", ".pyd")):
                    continue
                path = os.path.join(dirpath, name)
                rel = os.path.relpath(path, top).replace(os.sep, "/")
                yield f"{prefix}/{rel}", path

    yield from walk(os.path.join(src_root, "detectron2"), "detectron2")
    for name, rel in PROJECTS.items():
        pdir = os.path.join(src_root, rel)
        if not os.path.isdir(pdir):
            raise InstallError(f"the sdist lacks {rel}, which upstream installs as detectron2.projects.{name}")
        yield from walk(pdir, f"detectron2/projects/{name}")
    configs = os.path.join(src_root, "detectron2", "model_zoo", "configs")
    if not os.path.isdir(configs):
        raise InstallError("the sdist lacks detectron2/model_zoo/configs")


def _record_hash(data):
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def build_wheel(sdist, out_dir):
    """Build ``detectron2-0.6-py3-none-any.whl`` from the sdist's Python files; returns its path."""
    with tempfile.TemporaryDirectory() as tmp:
        src_root = _extract(sdist, tmp)
        dist_info = f"{DIST_NAME}-{DIST_VERSION}.dist-info"
        metadata = "\n".join(
            ["Metadata-Version: 2.1", f"Name: {DIST_NAME}", f"Version: {DIST_VERSION}",
             "Summary: Detectron2 0.6, pure-Python build (no compiled ops), from " + SDIST_REQUIREMENT,
             "Home-page: https://github.com/facebookresearch/detectron2", "License: Apache-2.0",
             "Requires-Python: >=3.6"] + [f"Requires-Dist: {r}" for r in REQUIRES]) + "\n"
        wheel_meta = ("Wheel-Version: 1.0\nGenerator: transfer.runtime.install\nRoot-Is-Purelib: true\n"
                      "Tag: py3-none-any\n")
        path = os.path.join(out_dir, f"{DIST_NAME}-{DIST_VERSION}-py3-none-any.whl")
        records = []
        with zipfile.ZipFile(path + ".tmp", "w", zipfile.ZIP_DEFLATED) as zf:
            for arcname, fpath in _wheel_files(src_root):
                with open(fpath, "rb") as f:
                    data = f.read()
                zf.writestr(arcname, data)
                records.append(f"{arcname},{_record_hash(data)},{len(data)}")
            for name, text in (("METADATA", metadata), ("WHEEL", wheel_meta),
                               ("top_level.txt", "detectron2\n")):
                data = text.encode()
                zf.writestr(f"{dist_info}/{name}", data)
                records.append(f"{dist_info}/{name},{_record_hash(data)},{len(data)}")
            records.append(f"{dist_info}/RECORD,,")
            zf.writestr(f"{dist_info}/RECORD", "\n".join(records) + "\n")
        os.replace(path + ".tmp", path)
    return path


def install_wheel(wheel, python=sys.executable):
    cmd = [python, "-m", "pip", "install", "--no-deps", "--no-index", "--force-reinstall", wheel]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise InstallError(f"pip could not install {wheel}: {tail[0]}")


def check_import(python=sys.executable):
    """Import Detectron2 through the project's runtime in a fresh interpreter; raise on failure."""
    code = ("import transfer, detectron2.modeling, detectron2.data, detectron2.engine, "
            "detectron2.evaluation, detectron2.model_zoo, detectron2.projects.point_rend")
    proc = subprocess.run([python, "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines() or ["no output"]
        raise InstallError(f"Detectron2 was installed but does not import: {lines[-1]}")


def ensure_detectron2(sdist=None, python=sys.executable, log=print):
    """Make an importable Detectron2 >= 0.6 available; return a short description of what happened.

    ``sdist``: a local copy of the sdist to use instead of downloading (it is checksummed all the same).
    """
    version = installed_version(python)
    if version is not None and _parse_version(version) >= MIN_VERSION:
        return f"detectron2 {version} already installed; nothing to do"
    if version is not None:
        log(f"detectron2 {version} is older than 0.6; installing the pure-Python 0.6")
    with tempfile.TemporaryDirectory() as tmp:
        if sdist is None:
            log(f"downloading {SDIST_REQUIREMENT} (sdist) with pip")
            sdist = download_sdist(tmp, python)
        elif not os.path.isfile(sdist):
            raise InstallError(f"sdist not found: {sdist}")
        verify_sha256(sdist)
        log("sha256 verified; building a pure-Python wheel (no compiled ops)")
        wheel = build_wheel(sdist, tmp)
        install_wheel(wheel, python)
        shutil.rmtree(os.path.join(tmp, "build"), ignore_errors=True)
    check_import(python)
    return f"installed detectron2 {DIST_VERSION} (pure Python, from {SDIST_REQUIREMENT})"
