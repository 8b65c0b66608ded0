"""Step 7: export samples to parquet shards in the published dataset schema.

Columns: ``image`` (Image: JPEG bytes as generated), ``mask`` (Image: PNG bytes), ``caption``,
``category``, ``id`` (all strings). Files are ``<output>/data/train-XXXXX-of-YYYYY.parquet`` with
the Hugging Face feature types in the schema metadata, so
``datasets.load_dataset("parquet", data_files=...)`` (and the training ``hf`` dataset) decode
``image``/``mask`` as PIL images. Bytes are copied, never re-encoded.

The file plan depends only on the sorted sample ids and ``rows_per_file``, so shards
(``--num-shards``) write disjoint files and a rerun skips files that already exist.
"""

from __future__ import annotations

import logging
import math
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from synth_sod.data_generation.mining import category_of
from synth_sod.data_generation.samples import (
    SampleError,
    check_sample,
    describe_ignored,
    list_images,
    read_metadata,
)
from synth_sod.data_generation.sharding import (
    Manifest,
    PipelineError,
    Shard,
    atomic_save,
    progress,
    readable_text,
    take_shard,
)

log = logging.getLogger(__name__)
COLUMNS = ("image", "mask", "caption", "category", "id")


@dataclass(frozen=True)
class ExportRow:
    id: str
    image_path: Path
    mask_path: Path
    caption: str
    category: str
    #: why this sample cannot be exported as found while listing (bad metadata); checked again
    #: with the pixels in :func:`check_rows`
    problem: str | None = None
    metadata_path: Path | None = None


def features():
    """The dataset's ``datasets.Features``."""
    import datasets

    return datasets.Features({"image": datasets.Image(), "mask": datasets.Image(),
                              "caption": datasets.Value("string"),
                              "category": datasets.Value("string"),
                              "id": datasets.Value("string")})


def _row(sid: str, image: Path, mask: Path, meta_path: Path, default_category: str) -> ExportRow:
    try:
        meta = read_metadata(meta_path)
    except SampleError as err:
        return ExportRow(sid, image, mask, "", default_category, str(err), meta_path)
    return ExportRow(sid, image, mask, meta.get("caption") or "",
                     meta.get("category") or default_category, None, meta_path)


def _pairs(images_dir: Path, masks_dir: Path, other: list[Path], without_mask: list[Path],
           duplicates: list[Path]) -> list[tuple[Path, Path]]:
    images, rest = list_images(images_dir)
    other += [p for p in rest if p.is_file()]
    stems = Counter(p.stem for p in images)
    pairs = []
    for img in images:
        mask = masks_dir / f"{img.stem}.png"
        if stems[img.stem] > 1:
            duplicates.append(img)
        elif mask.exists():
            pairs.append((img, mask))
        else:
            without_mask.append(img)
    return pairs


def collect_rows(input_dir: str | os.PathLike) -> list[ExportRow]:
    """Samples of a filtered flat folder (``images/``, ``masks/``, ``metadata/``) or of a raw
    generation folder (``<class>/images`` ...), sorted by id.

    Images are the files with a suffix of :data:`IMAGE_SUFFIXES` (what ``pseudo-label`` and
    ``filter`` write); files left out (other suffix, no mask, a stem used twice) are named in a
    warning.
    """
    root = Path(input_dir)
    if not root.is_dir():
        raise PipelineError(f"input folder not found: {readable_text(str(root))}")
    rows: list[ExportRow] = []
    other: list[Path] = []
    without_mask: list[Path] = []
    duplicates: list[Path] = []
    if (root / "images").is_dir():
        for img, mask in _pairs(root / "images", root / "masks", other, without_mask,
                                duplicates):
            rows.append(_row(img.stem, img, mask, root / "metadata" / f"{img.stem}.json",
                             category_of(img.stem)))
    else:
        for class_dir in sorted(p for p in root.iterdir() if (p / "images").is_dir()):
            for img, mask in _pairs(class_dir / "images", class_dir / "masks", other,
                                    without_mask, duplicates):
                rows.append(_row(f"{class_dir.name}_{img.stem}", img, mask,
                                 class_dir / "metadata" / f"{img.stem}.json", class_dir.name))
    ignored = describe_ignored(other, without_mask, duplicates)
    if ignored:
        log.warning("not exported: %s", ignored)
    if not rows:
        raise PipelineError(f"no image/mask pairs under {readable_text(str(root))}")
    rows.sort(key=lambda r: r.id)
    if len({r.id for r in rows}) != len(rows):
        raise PipelineError(f"{readable_text(str(root))}: duplicate sample ids (same stem with "
                            "two extensions?)")
    return rows


def check_rows(rows: list[ExportRow]) -> tuple[list[ExportRow], list[tuple[str, str]]]:
    """(rows that decode with equal image and mask sizes and good metadata, (id, why) of the
    others): a row that would fail in training is not written."""
    good, bad = [], []
    for row in rows:
        if row.problem:
            bad.append((row.id, row.problem))
            continue
        try:
            check_sample(row.image_path, row.mask_path, None, sample_id=row.id)
        except SampleError as err:
            bad.append((row.id, str(err)))
            continue
        good.append(row)
    return good, bad


def write_parquet(rows: list[ExportRow], path: Path, row_group_size: int = 100) -> Path:
    """One parquet file with the dataset schema, written atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = features().arrow_schema

    def write(tmp: Path) -> None:
        with pq.ParquetWriter(tmp, schema) as writer:
            for start in range(0, len(rows), row_group_size):
                chunk = rows[start:start + row_group_size]
                table = pa.table({
                    "image": [{"bytes": r.image_path.read_bytes(), "path": r.image_path.name}
                              for r in chunk],
                    "mask": [{"bytes": r.mask_path.read_bytes(), "path": r.mask_path.name}
                             for r in chunk],
                    "caption": [r.caption for r in chunk],
                    "category": [r.category for r in chunk],
                    "id": [r.id for r in chunk],
                }, schema=schema)
                writer.write_table(table)

    return atomic_save(path, write)


def export_parquet(input_dir: str | os.PathLike, output_dir: str | os.PathLike, *,
                   rows_per_file: int = 1000, row_group_size: int = 100, split: str = "train",
                   shard: Shard | None = None) -> Manifest:
    """Write this shard's parquet files (skipping existing ones)."""
    if rows_per_file < 1 or row_group_size < 1:
        raise PipelineError("rows_per_file and row_group_size must be >= 1")
    shard = shard or Shard()
    rows = collect_rows(input_dir)
    n_files = math.ceil(len(rows) / rows_per_file)
    mine = take_shard(list(range(n_files)), shard)
    out = Path(output_dir)
    manifest = Manifest.create(out, "export", shard, {"input_dir": str(input_dir),
                                                      "rows": len(rows), "files": n_files,
                                                      "rows_per_file": rows_per_file})
    manifest.total = len(mine)
    missing_captions = sum(1 for r in rows if not r.caption)
    if missing_captions:
        log.warning("%d of %d samples have no caption (no metadata)", missing_captions, len(rows))
    for k in progress(mine, total=len(mine), desc="export"):
        path = out / "data" / f"{split}-{k:05d}-of-{n_files:05d}.parquet"
        if path.is_file():
            manifest.skip()
            continue
        chunk, bad = check_rows(rows[k * rows_per_file:(k + 1) * rows_per_file])
        for sample_id, why in bad:
            log.warning("not exported: %s: %s", readable_text(sample_id), why)
            manifest.fail(sample_id, why)
        if not chunk:
            continue
        try:
            write_parquet(chunk, path, row_group_size)
        except OSError as err:
            manifest.fail(path.name, err)
            continue
        manifest.record({"file": path.name, "rows": len(chunk), "left_out": len(bad)})
    manifest.close()
    return manifest


if __name__ == "__main__":
    from synth_sod.data_generation.module_entry import run_as_step

    run_as_step("export")
