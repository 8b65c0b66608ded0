"""Training data: image/mask folders, id lists, Hugging Face / parquet sets, and loaders.

A *source* is a list of samples that can be loaded one by one as ``(RGB uint8 HxWx3, mask uint8
HxW)``. Folder sources pair ``images/`` and ``masks/`` files by stem (and accept the common
benchmark layouts). Sources are split into train/validation deterministically, or validation
comes from explicitly listed folders; :class:`MaskDataset` concatenates sources, augments
(per-sample mode, optional copy-paste composites) and never crashes on a bad file: it logs it
and serves another sample.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

# DataConfigError lives with synth_sod's other errors; re-exported (train.py, tests import it).
from synth_sod.errors import DataConfigError as DataConfigError
from synth_sod.model_training.copy_paste import CopyPasteConfig, composite
from synth_sod.model_training.transforms import build_transform

log = logging.getLogger(__name__)

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
MASK_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
# (images, masks) folder names, first match wins. "<NAME>-Image"/"<NAME>-Mask" (DUTS) is handled
# separately.
LAYOUTS = (("images", "masks"), ("im", "gt"), ("Imgs", "GT"), ("Image", "Mask"),
           ("image", "mask"), ("img", "mask"))


# --------------------------------------------------------------------------- sources


@dataclass
class FolderSource:
    """Pairs of files; ``load(i)`` reads one pair."""

    name: str
    pairs: list[tuple[Path, Path]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.pairs)

    def key(self, i: int) -> str:
        return f"{self.name}/{self.pairs[i][0].stem}"

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        img_path, mask_path = self.pairs[i]
        image = cv2.imread(str(img_path), cv2.IMREAD_COLOR)
        if image is None:
            raise OSError(f"cannot decode image {img_path}")
        mask = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE)
        if mask is None:
            raise OSError(f"cannot decode mask {mask_path}")
        if image.shape[:2] != mask.shape[:2]:
            raise ValueError(f"size mismatch {img_path.name}: image {image.shape[:2]} "
                             f"mask {mask.shape[:2]}")
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB), mask

    def subset(self, indices: Sequence[int], name: str | None = None) -> FolderSource:
        return FolderSource(name or self.name, [self.pairs[i] for i in indices])


class HFSource:
    """Rows of a Hugging Face dataset (hub id or local parquet) with ``image`` and ``mask``."""

    def __init__(self, dataset: Any, name: str, indices: Sequence[int] | None = None) -> None:
        self.dataset = dataset
        self.name = name
        self.indices = list(range(len(dataset))) if indices is None else list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def key(self, i: int) -> str:
        row_id = None
        if "id" in self.dataset.column_names:
            row_id = self.dataset[self.indices[i]]["id"]
        return f"{self.name}/{row_id if row_id is not None else self.indices[i]}"

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        row = self.dataset[self.indices[i]]
        image = np.asarray(row["image"].convert("RGB"))
        mask = np.asarray(row["mask"].convert("L"))
        if image.shape[:2] != mask.shape[:2]:
            raise ValueError(f"size mismatch in row {self.indices[i]}")
        return image, mask

    def subset(self, indices: Sequence[int], name: str | None = None) -> HFSource:
        return HFSource(self.dataset, name or self.name, [self.indices[i] for i in indices])


Source = FolderSource | HFSource


def find_layout(root: Path) -> tuple[Path, Path]:
    """The (images, masks) folders inside ``root``."""
    for img_name, mask_name in LAYOUTS:
        if (root / img_name).is_dir() and (root / mask_name).is_dir():
            return root / img_name, root / mask_name
    img_dirs = sorted(root.glob("*-Image"))
    for img_dir in img_dirs:
        mask_dir = root / (img_dir.name[: -len("-Image")] + "-Mask")
        if mask_dir.is_dir():
            return img_dir, mask_dir
    raise DataConfigError(
        f"{root}: no image/mask folders found (expected one of "
        f"{', '.join(f'{a}/+{b}/' for a, b in LAYOUTS)} or NAME-Image/+NAME-Mask/)"
    )


def scan_folder(root: Path, name: str | None = None) -> FolderSource:
    """Every image with a mask of the same stem, sorted by stem."""
    img_dir, mask_dir = find_layout(root)
    masks: dict[str, Path] = {}
    for p in sorted(mask_dir.iterdir()):
        if p.suffix.lower() in MASK_EXTS:
            masks.setdefault(p.stem, p)
    pairs = []
    missing = 0
    for p in sorted(img_dir.iterdir(), key=lambda q: q.stem):
        if p.suffix.lower() not in IMAGE_EXTS:
            continue
        if p.stem in masks:
            pairs.append((p, masks[p.stem]))
        else:
            missing += 1
    if missing:
        log.warning("%s: %d images without a mask were skipped", root, missing)
    if not pairs:
        raise DataConfigError(f"{root}: no image/mask pairs")
    return FolderSource(name or root.name, pairs)


def read_id_list(path: str | Path) -> list[str]:
    """Ids (file stems), one a line; blank lines and ``#`` comments ignored.

    A relative path is looked up from the working directory, then in the packaged ``splits/``.
    """
    p = Path(path)
    if not p.is_file() and not p.is_absolute():
        splits = resources.files("synth_sod.model_training").joinpath("splits")
        packaged = splits.joinpath(str(path))
        if packaged.is_file():
            p = Path(str(packaged))
    if not p.is_file():
        raise DataConfigError(f"id list not found: {path}")
    ids = []
    for line in p.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            ids.append(line.rsplit("/", 1)[-1])
    return ids


def _resolve_path(path: str, root: str | None) -> Path:
    p = Path(str(path)).expanduser()
    if not p.is_absolute() and root:
        p = Path(str(root)).expanduser() / p
    return p


def load_source(entry: str | Mapping[str, Any], root: str | None = None) -> Source:
    """One dataset entry of the config -> a source.

    ``entry`` is a folder (absolute, or relative to ``root``) or a mapping with ``path`` and
    optional ``name``, ``include`` / ``exclude`` (id-list files), or ``hf`` (a hub id or parquet
    file/folder) with optional ``split`` and ``name``.
    """
    spec = {"path": entry} if isinstance(entry, str) else dict(entry)
    if spec.get("hf"):
        source: Source = load_hf_source(spec["hf"], spec.get("split", "train"),
                                         spec.get("name"), spec.get("cache_dir"))
    else:
        if not spec.get("path"):
            raise DataConfigError(f"dataset entry without a path: {entry!r}")
        folder = _resolve_path(spec["path"], root)
        if not folder.is_dir():
            raise DataConfigError(f"dataset folder does not exist: {folder} (entry {entry!r}; "
                                  "set data_dir=... or an absolute path)")
        source = scan_folder(folder, spec.get("name"))
    keys = [source.key(i).rsplit("/", 1)[-1] for i in range(len(source))]
    if spec.get("include"):
        wanted = read_id_list(spec["include"])
        have = {k: i for i, k in enumerate(keys)}
        absent = [w for w in wanted if w not in have]
        if absent:
            raise DataConfigError(f"{source.name}: {len(absent)} listed ids have no pair, "
                                  f"e.g. {absent[:3]}")
        source = source.subset([have[w] for w in wanted])
    if spec.get("exclude"):
        drop = set(read_id_list(spec["exclude"]))
        source = source.subset([i for i, k in enumerate(keys) if k not in drop])
    return source


def load_hf_source(name_or_path: str, split: str = "train", name: str | None = None,
                   cache_dir: str | None = None) -> HFSource:
    """A hub dataset (e.g. ``okupyn/s3od_dataset``) or local parquet file(s)."""
    try:
        import datasets
    except ImportError as err:  # pragma: no cover - environment dependent
        raise DataConfigError("dataset=hf needs the 'datasets' package "
                              "(pip install 's3od[train]')") from err
    p = Path(str(name_or_path)).expanduser()
    if p.exists():
        files = sorted(str(f) for f in p.rglob("*.parquet")) if p.is_dir() else [str(p)]
        if not files:
            raise DataConfigError(f"no parquet files under {p}")
        ds = datasets.load_dataset("parquet", data_files=files, split="train",
                                   cache_dir=cache_dir)
    else:
        ds = datasets.load_dataset(str(name_or_path), split=split, cache_dir=cache_dir)
    missing = {"image", "mask"} - set(ds.column_names)
    if missing:
        raise DataConfigError(f"{name_or_path}: missing columns {sorted(missing)}")
    return HFSource(ds, name or p.stem or str(name_or_path))


def split_source(source: Source, val_split: float, seed: int) -> tuple[Source, Source | None]:
    """Deterministic split: sort by key, shuffle with ``random.Random(seed)``, first part -> val.

    Unlike the published code this uses a private RNG, so it does not depend on (or disturb) the
    global random state.
    """
    n_val = int(len(source) * float(val_split))
    if n_val <= 0:
        return source, None
    order = sorted(range(len(source)), key=source.key)
    random.Random(seed).shuffle(order)
    return source.subset(sorted(order[n_val:])), source.subset(sorted(order[:n_val]))


# --------------------------------------------------------------------------- dataset


class MaskDataset(Dataset):
    """Concatenated sources -> ``{"images": uint8 (3,S,S), "masks": float (S,S), "key": str}``.

    Training mode: each sample is, with probability ``copy_paste.p``, a copy-paste composite
    (its object on another sample's background, or a generated one) augmented in
    ``copy_paste_mode``; otherwise the photo augmented in ``transform_mode``.
    """

    def __init__(
        self,
        sources: Sequence[Source],
        image_size: int,
        transform_mode: str = "test",
        crop_scale: Sequence[float] = (0.85, 1.0),
        crop_p: float = 0.5,
        copy_paste: CopyPasteConfig | None = None,
        copy_paste_mode: str = "synthetic",
        max_bad_fraction: float = 0.2,
    ) -> None:
        self.sources = [s for s in sources if len(s)]
        self.offsets = np.cumsum([0] + [len(s) for s in self.sources])
        self.image_size = int(image_size)
        self.transform = build_transform(transform_mode, image_size, crop_scale, crop_p)
        self.copy_paste = copy_paste if copy_paste and copy_paste.p > 0 else None
        self.cp_transform = (build_transform(copy_paste_mode, image_size, crop_scale, crop_p)
                             if self.copy_paste else None)
        self.bad: set[int] = set()
        self.max_bad = max(10, int(max_bad_fraction * len(self)))
        cp = self.copy_paste
        self._fg_sources = self._source_pool(cp.foreground_sources if cp else None)
        self._bg_sources = self._source_pool(cp.background_sources if cp else None)
        # albumentations 2 draws from its own generator, which the global seeds do not reach.
        self.reseed(int(np.random.randint(2**31)))

    def reseed(self, seed: int) -> None:
        """Seed the augmentation pipelines (called per worker, so workers differ)."""
        self.transform.set_random_seed(seed)
        if self.cp_transform is not None:
            self.cp_transform.set_random_seed(seed + 1)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def _source_pool(self, names: Sequence[str] | None) -> list[int]:
        """Indices of the sources named (all when ``names`` is None); unknown names fail."""
        if names is None:
            return list(range(len(self.sources)))
        known = {s.name: k for k, s in enumerate(self.sources)}
        missing = sorted(set(names) - set(known))
        if missing:
            raise DataConfigError(f"copy_paste names unknown training source(s) {missing}; "
                                  f"known: {sorted(known)}")
        return sorted(known[n] for n in names)

    def _random_index(self, pool: list[int]) -> int:
        """A uniformly drawn sample of the sources in ``pool``."""
        sizes = [len(self.sources[k]) for k in pool]
        r = random.randrange(sum(sizes))
        for k, size in zip(pool, sizes, strict=True):
            if r < size:
                return int(self.offsets[k]) + r
            r -= size
        raise AssertionError("unreachable")

    def _locate(self, index: int) -> tuple[Source, int]:
        k = int(np.searchsorted(self.offsets, index, side="right") - 1)
        return self.sources[k], index - int(self.offsets[k])

    def key(self, index: int) -> str:
        source, i = self._locate(index)
        return source.key(i)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        source, i = self._locate(index)
        return source.load(i)

    def _load_checked(self, index: int) -> tuple[int, np.ndarray, np.ndarray]:
        rng = random.Random(index * 7919 + len(self.bad))
        while True:
            if index not in self.bad:
                try:
                    image, mask = self.load(index)
                    return index, image, mask
                except Exception as err:  # a bad file must not stop a long run
                    self.bad.add(index)
                    log.warning("skipping bad sample %s: %s", self.key(index), err)
                    if len(self.bad) > self.max_bad:
                        raise RuntimeError(f"{len(self.bad)} unreadable samples; last: "
                                           f"{self.key(index)}") from err
            index = rng.randrange(len(self))

    def __getitem__(self, index: int) -> dict[str, Any]:
        index, image, mask = self._load_checked(index)
        transform = self.transform
        source_k = int(np.searchsorted(self.offsets, index, side="right") - 1)
        if (self.copy_paste is not None and source_k in self._fg_sources
                and random.random() < self.copy_paste.p):
            bg_index, bg_image, bg_mask = self._load_checked(self._random_index(self._bg_sources))
            made = composite(image, mask, bg_image if bg_index != index else None, bg_mask,
                             int(self.image_size * random.uniform(1.0, 1.5)), random,
                             self.copy_paste)
            if made is not None:
                image, mask = made
                transform = self.cp_transform
        out = transform(image=image, mask=mask)
        img = torch.from_numpy(np.ascontiguousarray(out["image"])).permute(2, 0, 1).contiguous()
        msk = torch.from_numpy(np.ascontiguousarray(out["mask"])).float().div_(255.0)
        return {"images": img, "masks": msk, "key": self.key(index)}


class FluxFeatureDataset(Dataset):
    """Teacher training samples: image, mask, FLUX block features and concept maps.

    Features are ``<features_dir>/features/<id>.npz`` (the data-generation layout) with keys
    ``category``, ``background`` (H/16 x W/16 float) and ``layer_{i}`` (``(H/16*W/16, 768)``
    fp16). ``<id>`` is the image stem or ``<source>_<stem>``. The image is resized to the
    resolution the features were computed at (16 x the concept-map grid); no augmentation, as
    published (features are tied to the exact pixels). Images without features are dropped.
    """

    def __init__(self, sources: Sequence[Source], features_dir: str | Path,
                 feature_layers: Sequence[int] = (0, 1, 2, 3),
                 max_bad_fraction: float = 0.2) -> None:
        folder = Path(features_dir)
        folder = folder / "features" if (folder / "features").is_dir() else folder
        if not folder.is_dir():
            raise DataConfigError(f"FLUX features folder does not exist: {folder}")
        available = {p.stem: p for p in folder.glob("*.npz")}
        self.items: list[tuple[Source, int, Path]] = []
        total = 0
        for source in sources:
            for i in range(len(source)):
                total += 1
                stem = source.key(i).rsplit("/", 1)[-1]
                for cand in (stem, f"{source.name}_{stem}"):
                    if cand in available:
                        self.items.append((source, i, available[cand]))
                        break
        if total and not self.items:
            raise DataConfigError(f"no FLUX feature file in {folder} matches any of {total} "
                                  "images (expected <stem>.npz or <dataset>_<stem>.npz)")
        if len(self.items) < total:
            log.warning("FLUX features found for %d of %d images", len(self.items), total)
        self.feature_layers = [int(i) for i in feature_layers]
        self.bad: set[int] = set()
        self.max_bad = max(10, int(max_bad_fraction * len(self.items)))

    def __len__(self) -> int:
        return len(self.items)

    def _load(self, index: int) -> dict[str, Any]:
        source, i, npz_path = self.items[index]
        image, mask = source.load(i)
        with np.load(npz_path) as npz:
            category = np.asarray(npz["category"], np.float32)
            background = np.asarray(npz["background"], np.float32)
            layers = [np.asarray(npz[f"layer_{k}"], np.float32) for k in self.feature_layers]
        gh, gw = category.shape
        for layer in layers:
            if layer.shape[0] != gh * gw:
                raise ValueError(f"{npz_path.name}: {layer.shape[0]} tokens for a {gh}x{gw} grid")
        size = (gw * 16, gh * 16)
        image = cv2.resize(image, size, interpolation=cv2.INTER_LANCZOS4)
        mask = cv2.resize(mask, size, interpolation=cv2.INTER_LINEAR)
        return {
            "images": torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).contiguous(),
            "masks": torch.from_numpy(mask).float().div_(255.0),
            "transformer_features": [torch.from_numpy(x) for x in layers],
            "concept_maps": {"category": torch.from_numpy(category),
                             "background": torch.from_numpy(background)},
            "key": source.key(i),
        }

    def __getitem__(self, index: int) -> dict[str, Any]:
        rng = random.Random(index)
        while True:
            if index not in self.bad:
                try:
                    return self._load(index)
                except Exception as err:  # a bad file must not stop a long run
                    self.bad.add(index)
                    log.warning("skipping bad sample %s: %s", self.items[index][0].key(
                        self.items[index][1]), err)
                    if len(self.bad) > self.max_bad:
                        raise RuntimeError(f"{len(self.bad)} unreadable samples") from err
            index = rng.randrange(len(self))


# --------------------------------------------------------------------------- from config


@dataclass
class DataSplits:
    train: list[Source]
    val: list[Source]

    def describe(self) -> str:
        def fmt(srcs: list[Source]) -> str:
            return ", ".join(f"{s.name}={len(s)}" for s in srcs) or "-"

        return (f"train {sum(len(s) for s in self.train)} ({fmt(self.train)}); "
                f"val {sum(len(s) for s in self.val)} ({fmt(self.val)})")


def resolve_splits(cfg: Mapping[str, Any], seed: int = 42) -> DataSplits:
    """Every source of the ``dataset`` config, checked and split. Raises DataConfigError."""
    root = cfg.get("root")
    entries = list(cfg.get("datasets") or [])
    if not entries:
        raise DataConfigError("dataset.datasets is empty: pass dataset.datasets='[dir1,dir2]'")
    train: list[Source] = []
    val: list[Source] = []
    explicit_val = list(cfg.get("val_datasets") or [])
    for entry in entries:
        source = load_source(entry, root)
        if explicit_val:
            train.append(source)
        else:
            tr, va = split_source(source, cfg.get("val_split", 0.1), seed)
            train.append(tr)
            if va is not None:
                val.append(va)
    for entry in explicit_val:
        val.append(load_source(entry, root))
    # A sample must never be both trained on and validated on.
    val_keys = {s.key(i) for s in val for i in range(len(s))}
    clash = [s.key(i) for s in train for i in range(len(s)) if s.key(i) in val_keys]
    if clash:
        raise DataConfigError(f"{len(clash)} validation samples are also in training, "
                              f"e.g. {clash[:3]}; add an exclude list")
    fraction = cfg.get("debug_subset_fraction")
    if fraction:
        train = [s.subset(range(max(1, int(len(s) * fraction)))) for s in train]
        val = [s.subset(range(max(1, int(len(s) * fraction)))) for s in val]
    return DataSplits(train, val)


def copy_paste_config(cfg: Mapping[str, Any] | None) -> CopyPasteConfig | None:
    if not cfg or not cfg.get("p"):
        return None
    kw = {k: (tuple(v) if isinstance(v, list | tuple) else v) for k, v in dict(cfg).items()
          if k in CopyPasteConfig.__dataclass_fields__}
    return CopyPasteConfig(**kw)


def build_datasets(cfg: Mapping[str, Any], splits: DataSplits) -> tuple[Dataset, Dataset]:
    if cfg.get("flux_features_dir"):
        layers = cfg.get("feature_layers", (0, 1, 2, 3))
        return (FluxFeatureDataset(splits.train, cfg["flux_features_dir"], layers),
                FluxFeatureDataset(splits.val, cfg["flux_features_dir"], layers))
    size = int(cfg["image_size"])
    cp = dict(cfg.get("copy_paste") or {})
    train = MaskDataset(
        splits.train, size, cfg.get("transform_mode", "regular"),
        crop_scale=tuple(cfg.get("crop_scale", (0.85, 1.0))), crop_p=cfg.get("crop_p", 0.5),
        copy_paste=copy_paste_config(cp), copy_paste_mode=cp.get("transform_mode", "synthetic"),
    )
    val = MaskDataset(splits.val, int(cfg.get("val_image_size") or size), "test")
    return train, val


def _global_rank() -> int:
    """This process's rank in the DDP job, as Lightning knows it (0 without distribution)."""
    try:
        from lightning.fabric.utilities.rank_zero import rank_zero_only
    except ImportError:  # pragma: no cover - lightning is a training dependency
        return int(os.environ.get("RANK", 0))
    return int(getattr(rank_zero_only, "rank", 0) or 0)


def augmentation_seed(worker_seed: int, rank: int) -> int:
    """Seed of one data-loader worker's augmentation pipelines, different on every DDP rank.

    ``worker_seed`` (torch's ``WorkerInfo.seed``: base seed + worker id) is the same on every
    rank, because each rank's base seed comes from a torch generator that
    ``seed_everything`` set identically; without the rank all ranks would crop and flip
    their (different) samples with one shared random sequence.
    """
    state = np.random.SeedSequence([int(worker_seed) % 2**32, int(rank)]).generate_state(1)
    return int(state[0] % 2**31)


def _worker_init(worker_id: int) -> None:
    """Seed the worker like Lightning does, and keep OpenCV to one thread per worker."""
    cv2.setNumThreads(1)
    try:
        from lightning.fabric.utilities.seed import pl_worker_init_function

        pl_worker_init_function(worker_id)
    except ImportError:  # pragma: no cover - lightning is a training dependency
        pass
    info = torch.utils.data.get_worker_info()
    if info is not None and hasattr(info.dataset, "reseed"):
        info.dataset.reseed(augmentation_seed(info.seed, _global_rank()))


def build_dataloaders(cfg: Mapping[str, Any], train: Dataset, val: Dataset,
                      pin_memory: bool = False) -> tuple[DataLoader, DataLoader | None]:
    """``num_workers`` feeds training; validation gets ``val_num_workers`` (default the same:
    one worker could not keep a GPU busy on 1024 px validation images)."""
    workers = int(cfg.get("num_workers", 0))
    val_workers = cfg.get("val_num_workers")
    val_workers = workers if val_workers is None else int(val_workers)
    batch = int(cfg["train_bs"])
    val_batch = int(cfg.get("val_bs", batch))
    if isinstance(train, FluxFeatureDataset) and (batch != 1 or val_batch != 1):
        log.warning("FLUX-feature samples differ in resolution: batch size forced to 1")
        batch = val_batch = 1
    train_loader = DataLoader(
        train, batch_size=batch, shuffle=True, drop_last=len(train) > batch,
        num_workers=workers, pin_memory=pin_memory, persistent_workers=workers > 0,
        worker_init_fn=_worker_init if workers > 0 else None,
    )
    val_loader = None
    if len(val):
        val_loader = DataLoader(
            val, batch_size=val_batch, shuffle=False,
            num_workers=val_workers, pin_memory=pin_memory,
            persistent_workers=val_workers > 0,
            worker_init_fn=_worker_init if val_workers > 0 else None,
        )
    return train_loader, val_loader
