"""tools/install_detectron2.py: no-op when present, checksum enforced, wheel contents as upstream's."""
import base64
import hashlib
import importlib.metadata
import io
import subprocess
import sys
import tarfile
import zipfile

import pytest

from transfer.runtime import install as d2install
from pretrain.common.paths import REPO_ROOT
REPO = REPO_ROOT


def _bare_python(tmp_path):
    """An interpreter without Detectron2 (a venv without site packages)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "venv")], check=True)
    return str(tmp_path / "venv" / "bin" / "python")


def _fake_sdist(path, extra=b""):
    files = {
        "pb1-detectron2-0.6/detectron2/__init__.py": b"__version__ = '0.6'\n" + extra,
        "pb1-detectron2-0.6/detectron2/model_zoo/__init__.py": b"",
        "pb1-detectron2-0.6/detectron2/model_zoo/configs/Base-RCNN-C4.yaml": b"MODEL: {}\n",
        "pb1-detectron2-0.6/detectron2/projects/__init__.py": b"",
        "pb1-detectron2-0.6/projects/PointRend/point_rend/__init__.py": b"x = 1\n",
        "pb1-detectron2-0.6/projects/DeepLab/deeplab/__init__.py": b"",
        "pb1-detectron2-0.6/projects/Panoptic-DeepLab/panoptic_deeplab/__init__.py": b"",
        "pb1-detectron2-0.6/tools/train_net.py": b"",
    }
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_noop_when_detectron2_is_present(monkeypatch):
    def no_download(*a, **k):
        raise AssertionError("must not download when Detectron2 is importable")

    monkeypatch.setattr(d2install, "download_sdist", no_download)
    assert "nothing to do" in d2install.ensure_detectron2()
    out = subprocess.run([sys.executable, "tools/install_detectron2.py"], cwd=REPO, capture_output=True,
                         text=True)
    assert out.returncode == 0 and "already installed" in out.stdout


def test_tampered_sdist_is_refused(tmp_path):
    sdist = _fake_sdist(tmp_path / "pb1-detectron2-0.6.tar.gz")
    with pytest.raises(d2install.InstallError, match="checksum mismatch.*refusing"):
        d2install.verify_sha256(sdist)
    python = _bare_python(tmp_path)
    assert d2install.installed_version(python) is None
    with pytest.raises(d2install.InstallError, match="checksum mismatch"):
        d2install.ensure_detectron2(sdist=str(sdist), python=python, log=lambda *a: None)
    with pytest.raises(d2install.InstallError, match="sdist not found"):
        d2install.ensure_detectron2(sdist=str(tmp_path / "missing.tar.gz"), python=python, log=lambda *a: None)


def test_wheel_holds_package_configs_and_projects(tmp_path):
    sdist = _fake_sdist(tmp_path / "s.tar.gz")
    wheel = d2install.build_wheel(str(sdist), str(tmp_path))
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        assert "detectron2/model_zoo/configs/Base-RCNN-C4.yaml" in names
        assert "detectron2/projects/point_rend/__init__.py" in names
        assert "detectron2/projects/panoptic_deeplab/__init__.py" in names
        assert not any(n.startswith("tools/") for n in names)
        metadata = zf.read("detectron2-0.6.dist-info/METADATA").decode()
        assert "Name: detectron2" in metadata and "Version: 0.6" in metadata
        record = zf.read("detectron2-0.6.dist-info/RECORD").decode().splitlines()
        for line in record:
            name, digest, size = line.rsplit(",", 2)
            if not digest:
                continue
            data = zf.read(name)
            expected = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            assert digest == "sha256=" + expected and int(size) == len(data)
        assert {line.split(",")[0] for line in record} == names


def test_installed_distribution_is_complete():
    dist = importlib.metadata.distribution("detectron2")
    if "pure-Python" not in (dist.metadata["Summary"] or ""):
        pytest.skip("Detectron2 here is a source build, not the registry fallback")
    files = {str(f) for f in dist.files}
    assert any(f.startswith("detectron2/model_zoo/configs/COCO-InstanceSegmentation/") for f in files)
    assert "detectron2/projects/point_rend/__init__.py" in files
    assert any(f.endswith("RECORD") for f in files)  # what pip uninstall removes


def test_wheel_is_a_proper_distribution_pip_lists_and_removes(tmp_path):
    wheel = d2install.build_wheel(str(_fake_sdist(tmp_path / "s.tar.gz")), str(tmp_path))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
    subprocess.run(pip + ["install", "-q", "--no-deps", "--no-index", wheel], check=True)
    shown = subprocess.run(pip + ["show", "-f", "detectron2"], capture_output=True, text=True, check=True).stdout
    assert "Version: 0.6" in shown and "detectron2/projects/point_rend/__init__.py" in shown
    site = next((venv / "lib").glob("python*/site-packages"))
    assert (site / "detectron2" / "model_zoo" / "configs" / "Base-RCNN-C4.yaml").is_file()
    subprocess.run(pip + ["uninstall", "-y", "-q", "detectron2"], check=True)
    assert not (site / "detectron2").exists()
