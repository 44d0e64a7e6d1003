from setuptools import find_packages, setup

setup(
    name="ssl-d2-transfer",
    version="0.1.0",
    description="Detectron2 transfer benchmark for self-supervised ResNet backbones",
    packages=find_packages(include=["pretrain", "pretrain.*", "transfer", "transfer.*"]),
    python_requires=">=3.9",
    install_requires=[
        "torch>=2.0",
        "torchvision>=0.15",
        "numpy",
        "Pillow",
        "fvcore>=0.1.5",
        "iopath>=0.1.7",
        "pycocotools>=2.0.2",
        "faster-coco-eval>=1.5",
        "lvis",
        "submitit>=1.4",
        "yacs>=0.1.8",
        "pyyaml",
        "tabulate",
        "termcolor",
        "cloudpickle",
        "tqdm",
        "omegaconf>=2.1",
        "hydra-core>=1.1",
        "matplotlib",
        "tensorboard",
        "scipy",
        "safetensors",
        # dataset checks decode COCO/LVIS annotation files with it (transfer/data/coco_json.py)
        "msgspec>=0.18",
    ],
    extras_require={
        # FAISS for the memory-bank methods' neighbour search and k-means (pretrain/methods/neighbours.py falls back
        # to torch without it); on GPU machines install faiss-gpu instead
        "faiss": ["faiss-cpu"],
        # pytest-xdist: `make test` runs the suite on every core (tests/conftest.py keeps the SLURM tests in one worker)
        "test": ["pytest", "pytest-xdist", "timm", "faiss-cpu"],
        "bench": ["lightly"],
    },
)
