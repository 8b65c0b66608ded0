"""`s3od eval` and `s3od benchmark` as a user runs them: exit codes, tables, report files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from PIL import Image, ImageFilter
from typer.testing import CliRunner

from s3od.cli import app

from .conftest import needs_shared, shared_pairs

pytest.importorskip("py_sod_metrics")
runner = CliRunner()


def _invoke(*args: str):
    result = runner.invoke(app, list(args))
    assert "Traceback" not in result.output
    return result


@pytest.fixture
def sod(tmp_path) -> Path:
    """tmp/SOD/{images,masks} linking 4 real pairs, plus blurred predictions in tmp/blur."""
    gt = tmp_path / "SOD"
    (gt / "images").mkdir(parents=True)
    (gt / "masks").mkdir()
    (tmp_path / "blur").mkdir()
    for image, mask in shared_pairs("sod-bsds300", 4):
        (gt / "images" / image.name).symlink_to(image)
        (gt / "masks" / mask.name).symlink_to(mask)
        Image.open(mask).filter(ImageFilter.GaussianBlur(3)).save(tmp_path / "blur" / mask.name)
    return gt


def test_help_lists_the_commands():
    result = _invoke("--help")
    assert result.exit_code == 0
    assert "eval" in result.output and "benchmark" in result.output


@needs_shared
def test_eval_compares_methods_and_writes_reports(tmp_path, sod):
    out = tmp_path / "reports" / "cmp"
    result = _invoke("eval", "--pred", f"gt={sod / 'masks'}", "--pred", str(tmp_path / "blur"),
                     "--gt", str(sod), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "gt" in result.output and "blur" in result.output and "set SOD" in result.output
    rows = list(csv.DictReader(out.with_suffix(".csv").read_text().splitlines()))
    assert [(r["model"], r["set"], r["count"]) for r in rows] == [("gt", "SOD", "4"),
                                                                   ("blur", "SOD", "4")]
    assert float(rows[0]["MAE"]) == 0 and 0 < float(rows[1]["MAE"]) < 0.1
    md = out.with_suffix(".md").read_text()
    assert md.count("**") >= 2 * 9  # the gt row wins every column
    assert json.loads(out.with_suffix(".json").read_text())["results"][1]["model"] == "blur"


@needs_shared
def test_eval_bad_input_gives_clean_errors(tmp_path, sod):
    missing = _invoke("eval", "--pred", str(tmp_path / "absent"), "--gt", str(sod))
    assert missing.exit_code == 2 and "no such prediction folder" in missing.output

    unknown = _invoke("eval", "--pred", str(tmp_path / "blur"), "--gt", str(sod),
                      "--sets", "ECSSD")
    assert unknown.exit_code == 2 and "unknown set(s) ECSSD" in unknown.output

    dup = _invoke("eval", "--pred", f"a={tmp_path / 'blur'}", "--pred",
                  f"a={sod / 'masks'}", "--gt", str(sod))
    assert dup.exit_code == 2 and "share a name" in dup.output

    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.png").write_bytes(b"junk")
    nothing = _invoke("eval", "--pred", str(tmp_path / "junk"), "--gt", str(sod))
    assert nothing.exit_code == 1 and "nothing could be scored" in nothing.output
    assert "no prediction with this stem" in nothing.output

    (tmp_path / "blur" / "100080.png").write_bytes(b"broken")
    partial = _invoke("eval", "--pred", str(tmp_path / "blur"), "--gt", str(sod))
    assert partial.exit_code == 0 and "1 file(s) not scored" in partial.output
    assert "100080.png" in partial.output


def test_benchmark_missing_data_fails_before_loading_a_model(tmp_path):
    result = _invoke("benchmark", "--data", str(tmp_path / "absent"), "--model", "whatever")
    assert result.exit_code == 2 and "no such folder" in result.output


@needs_shared
def test_benchmark_unknown_model_fails_cleanly(sod):
    result = _invoke("benchmark", "--data", str(sod), "--model", "no-such-model-xyz")
    assert result.exit_code == 2 and "no-such-model-xyz" in result.output


@needs_shared
def test_benchmark_runs_a_checkpoint_and_saves_predictions(tmp_path, sod, tiny_lite_checkpoint):
    result = _invoke("benchmark", "--data", str(sod), "--model", str(tiny_lite_checkpoint),
                     "--image-size", "64", "--batch-size", "3", "--device", "cpu",
                     "--save-pred", str(tmp_path / "pred"), "--out", str(tmp_path / "b.json"))
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "b.json").read_text())
    (row,) = doc["results"]
    assert row["set"] == "SOD" and row["count"] == 4 and row["error"] is None
    assert len(list((tmp_path / "pred" / "SOD").glob("*.png"))) == 4
    # Re-scoring the saved predictions reproduces the benchmark's numbers.
    again = _invoke("eval", "--pred", str(tmp_path / "pred"), "--gt", str(sod),
                    "--out", str(tmp_path / "again"))
    assert again.exit_code == 0
    assert json.loads((tmp_path / "again.json").read_text())["results"][0]["metrics"] == \
        row["metrics"]
