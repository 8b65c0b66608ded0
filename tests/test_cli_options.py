"""``s3od remove`` refuses option combinations it would otherwise silently ignore (issue 22)."""

from __future__ import annotations

import pytest

from .conftest import SAMPLES
from .test_cli_faults import remove


@pytest.mark.parametrize(("args", "match"), [
    (["--mask-only", "--bg-color", "white"], "--mask-only writes the mask"),
    (["--bg-color", "#ffffff80"], "has an alpha of 128"),
])
def test_ignored_options_are_refused_before_loading(tmp_path, tiny_lite_checkpoint, args, match):
    out = tmp_path / "o.png"
    code, text = remove(tiny_lite_checkpoint, str(SAMPLES / "cat.jpg"), "-o", str(out), *args)
    assert code == 2 and match in text, text
    assert not out.exists()
