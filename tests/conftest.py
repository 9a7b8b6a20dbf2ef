import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

os.environ.setdefault("ALGM_QUIET", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

PHOTOS = ["astronaut", "coffee", "chelsea", "rocket", "motorcycle_left", "hubble_deep_field"]


def photo(name: str) -> np.ndarray:
    """A real photograph bundled with scikit-image (read from its data folder, offline)."""
    import glob

    import skimage.data
    from PIL import Image

    path = glob.glob(os.path.join(os.path.dirname(skimage.data.__file__), name + ".*"))[0]
    img = np.asarray(Image.open(path).convert("RGB"))
    if img.ndim == 2:
        img = np.stack([img] * 3, -1)
    return img[..., :3]


def prep(img: np.ndarray, size, norm="vit") -> torch.Tensor:
    h, w = (size, size) if isinstance(size, int) else size
    t = torch.from_numpy(np.array(img)).permute(2, 0, 1).float()[None] / 255
    t = F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False)
    mean, std = (0.5, 0.5) if norm == "vit" else (0.45, 0.225)
    return (t - mean) / std


def smooth_image(size: int, seed: int = 0) -> torch.Tensor:
    """Large flat regions with a few edges: merges must happen."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(1, 3, size, size)
    k = size // 4
    for i in range(4):
        for j in range(4):
            x[..., i * k:(i + 1) * k, j * k:(j + 1) * k] = torch.rand(3, 1, 1, generator=g) * 2 - 1
    return x


@pytest.fixture(scope="session")
def photos_128():
    return [prep(photo(n), 128) for n in PHOTOS]


@pytest.fixture(scope="session")
def tiny_linear():
    from algm_export import create_segmenter

    return create_segmenter("vit_tiny", "linear", 128, n_cls=21, seed=0)


@pytest.fixture(scope="session")
def tiny_mask():
    from algm_export import create_segmenter

    return create_segmenter("vit_tiny", "mask_transformer", 128, n_cls=21, seed=1)


@pytest.fixture(scope="session")
def tiny_deit():
    from algm_export import create_segmenter

    return create_segmenter("deit_tiny", "linear", 128, n_cls=21, seed=2)


@pytest.fixture(scope="session")
def plugin_library(tmp_path_factory):
    """libalgm_plugins.so built from plugins/ for SM86, once for every engine-build test (skips when it
    cannot be built here)."""
    from pathlib import Path

    from algm_export.core.errors import AlgmError

    try:
        from algm_export.tasks.plugins import build_plugins
    except ImportError as e:
        pytest.skip(f"the algm plugin library is not available yet (algm_export.tasks.plugins: {e})")
    try:
        from _helpers.plugins import tensorrt_include

        paths = build_plugins(build_dir=tmp_path_factory.mktemp("plugins"), archs=[86], require_plugins=True,
                              tensorrt_include=tensorrt_include())
    except (AlgmError, OSError) as e:
        pytest.skip(f"cannot build the algm plugin library here (TensorRT headers: set ALGM_TENSORRT_INCLUDE; "
                    f"nvcc, cmake): {str(e).splitlines()[0]}")
    return Path(paths["plugins"])


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory):
    """A real export folder of a tiny published-format checkpoint (ViT-Ti, 64x64, 5 classes, one
    ALGM setting), made once per session: (checkpoint folder, export folder, image folder).
    Tests that change it work on a copy (`shutil.copytree`)."""
    from PIL import Image

    from algm_export import create_segmenter
    from algm_export.export.pipeline import export_folder
    from algm_export.models.registry import resolve_model
    from algm_export.models.formats.published_segmenter import save_segmenter

    root = tmp_path_factory.mktemp("tiny_export")
    ck = root / "ckpt"
    save_segmenter(create_segmenter("vit_tiny", "linear", 64, n_cls=5, seed=0), ck)
    images = root / "images"
    images.mkdir()
    for name in ("coffee", "chelsea"):
        Image.fromarray(photo(name)).resize((80, 64)).save(images / f"{name}.png")
    out = root / "export"
    export_folder(resolve_model(str(ck)), str(ck), out, thresholds=[0.9], calib_images=images)
    return ck, out, images


DYNAMIC_THRESHOLDS = (0.8, 0.88)


@pytest.fixture(scope="session")
def dynamic_folders(tmp_path_factory):
    """A 6-block ViT-Ti Segmenter at 128 px (8x8 patches, 21 classes, layers 1 and 5) exported once per
    session: `mixed` (baseline, static 0.88 + dynamic 0.88, `export_folder(..., dynamic_thresholds=...)`)
    and `tin` (baseline and one threshold-input dynamic file for 0.80 and 0.88), with the six photos
    (`images`) they were calibrated on. Tests read them (reports written by validate / bench are fine);
    tests that change them work on a copy."""
    from PIL import Image

    from algm_export.export.pipeline import export_folder
    from algm_export.models.registry import resolve_model
    from algm_export.models.formats.published_segmenter import save_segmenter
    from _helpers.models import tiny_segmenter

    root = tmp_path_factory.mktemp("dyncmd")
    save_segmenter(tiny_segmenter(), root / "ck")
    images = root / "images"
    images.mkdir()
    for name in PHOTOS:
        Image.fromarray(photo(name)).save(images / f"{name}.png")
    model = resolve_model(str(root / "ck"))
    export_folder(model, str(root / "ck"), root / "mixed", thresholds=[0.88], dynamic_thresholds=[0.88],
                  calib_images=images)
    export_folder(model, str(root / "ck"), root / "tin", thresholds=list(DYNAMIC_THRESHOLDS), token_mode="dynamic",
                  threshold_input=True)
    return {"ck": root / "ck", "images": images, "mixed": root / "mixed", "tin": root / "tin", "model": model}
