"""The building blocks of view pipelines: :class:`ViewPipeline` (one image in, a dict of uint8 views out),
MoCo v2's :class:`GaussianBlur` and the JigSaw branch :class:`JigsawTiles`. The recipes that assemble them
live in :mod:`pretrain.data.views`, their array versions in :mod:`pretrain.data.fast_views`; both import this
module, and :mod:`pretrain.data.views` re-exports its names."""
import torch
from PIL import ImageFilter
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from pretrain.common.rng import seed_cpu

__all__ = ["ViewPipeline", "GaussianBlur", "JigsawTiles"]


class ViewPipeline:
    """``pipeline(image, seed) -> dict`` of uint8 tensors; see the module docstring."""

    def __init__(self, augment, num_views=2, jigsaw=None, min_decode_size=None, name=""):
        self.augment = augment
        self.num_views = num_views
        self.jigsaw = jigsaw
        self.min_decode_size = min_decode_size  # shortest side the decoder may reduce an image to
        self.name = name

    def __call__(self, image, seed=0):
        with torch.random.fork_rng(devices=[]):
            seed_cpu(seed)
            out = {f"view{i + 1}": TF.pil_to_tensor(self.augment(image)) for i in range(self.num_views)}
            if self.jigsaw is not None:
                out["jigsaw"], out["jigsaw_perm"] = self.jigsaw(image)
        return out

    def __repr__(self):
        jig = f", jigsaw={self.jigsaw!r}" if self.jigsaw is not None else ""
        return f"ViewPipeline({self.name!r}, views={self.num_views}, augment={self.augment!r}{jig})"


class GaussianBlur:
    """PIL Gaussian blur with sigma drawn uniformly from ``sigma`` (MoCo v2's ``GaussianBlur``; torch RNG)."""

    def __init__(self, sigma=(0.1, 2.0)):
        self.sigma = tuple(sigma)

    def __call__(self, image):
        lo, hi = self.sigma
        s = lo + (hi - lo) * float(torch.rand(()))
        return image.filter(ImageFilter.GaussianBlur(radius=s))

    def __repr__(self):
        return f"GaussianBlur(sigma={self.sigma})"


class JigsawTiles:
    """PIRL / PyContrast JigSaw: crop, cut ``grid x grid`` cells, one ``tile`` x ``tile`` tile at a random
    offset per cell, shuffle. Returns (tiles (G*G)x3xTxT uint8, perm) with ``tiles[j]`` from cell
    ``perm[j]`` (row-major)."""

    def __init__(self, grid=3, image_size=255, tile_size=64, scale=(0.6, 1.0)):
        self.grid, self.image_size, self.tile_size = int(grid), int(image_size), int(tile_size)
        self.cell = self.image_size // self.grid
        if not 0 < self.tile_size <= self.cell:
            raise ValueError(f"JIGSAW.TILE_SIZE {tile_size} must be in 1..{self.cell} "
                             f"(JIGSAW.IMAGE_SIZE {image_size} / JIGSAW.GRID {grid})")
        self.crop = T.Compose([T.RandomResizedCrop(self.image_size, scale=tuple(scale), antialias=True),
                               T.RandomHorizontalFlip()])

    def __call__(self, image):
        pixels = TF.pil_to_tensor(self.crop(image))
        n = self.grid * self.grid
        offsets = torch.randint(0, self.cell - self.tile_size + 1, (n, 2))
        perm = torch.randperm(n)
        t = self.tile_size
        tiles = []
        for cell in perm.tolist():
            r, c = divmod(cell, self.grid)
            dy, dx = offsets[cell].tolist()
            y, x = r * self.cell + dy, c * self.cell + dx
            tiles.append(pixels[:, y:y + t, x:x + t])
        return torch.stack(tiles), perm

    def __repr__(self):
        return (f"JigsawTiles(grid={self.grid}, image_size={self.image_size}, tile_size={self.tile_size}, "
                f"crop={self.crop.transforms[0]!r})")
