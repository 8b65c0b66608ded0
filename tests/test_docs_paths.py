"""Generated docs name files relative to the repository, never by a path of the machine that
ran the generator (issue 23)."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
# Absolute paths of a development machine: its work tree, home folders, temp folders.
MACHINE_PATH = re.compile(r"(?<![\w.~/])/(?:work|home|root|tmp|Users|mnt|scratch)/[\w.-]+")


def test_committed_docs_carry_no_machine_paths() -> None:
    found = []
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for number, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1):
            found += [f"{doc.name}:{number}: {m[0]}" for m in MACHINE_PATH.finditer(line)]
    assert not found, "\n".join(found)


def test_quality_report_shows_paths_relative_to_the_repository() -> None:
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))  # quality.py imports its helpers by name
    spec = importlib.util.spec_from_file_location("quality_paths", BENCH / "quality.py")
    quality = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = quality  # its dataclasses look their module up by name
    spec.loader.exec_module(quality)

    command = quality.shown_command([
        "--model", f"mine={REPO.parent}/pl/v3.safetensors", "--json", f"{REPO}/runs/q.json",
        "--onnx-teacher", f"u2net={Path.home()}/models/u2net.onnx@flip", "--limit", "3"])
    assert command == ("python benchmarks/quality.py --model mine=../pl/v3.safetensors --json "
                       "runs/q.json --onnx-teacher u2net=~/models/u2net.onnx@flip --limit 3")
    assert quality.rel(REPO / "src" / "s3od" / "weights" / "x.safetensors") == (
        "src/s3od/weights/x.safetensors")
