"""One error base per package: every error s3od raises on purpose is an ``S3ODError``, every
one of ``synth_sod`` a ``SynthSODError`` (itself an ``S3ODError``, the package above)."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from s3od.errors import MissingDependencyError, S3ODError
from synth_sod.errors import ConfigError, DataConfigError, PipelineError, SynthSODError

SRC = Path(__file__).resolve().parents[1] / "src"


def _exception_classes() -> list[tuple[str, str]]:
    """(module, class) of every class in src/ whose name ends in Error or Exception."""
    found = []
    for path in sorted(SRC.rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        if parts[0] not in ("s3od", "synth_sod"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.name.endswith(("Error", "Exception")):
                found.append((".".join(parts), node.name))
    return found


CLASSES = _exception_classes()


def test_scan_finds_the_known_errors():
    names = {name for _, name in CLASSES}
    assert {"S3ODError", "SynthSODError", "PipelineError", "ApiError", "EvaluationError"} <= names


@pytest.mark.parametrize(("module", "name"), CLASSES, ids=[f"{m}.{n}" for m, n in CLASSES])
def test_every_error_has_its_package_base(module: str, name: str):
    cls = getattr(importlib.import_module(module), name)
    if not isinstance(cls, type) or not issubclass(cls, BaseException):
        pytest.skip(f"{name} is not an exception (e.g. a response model)")
    assert issubclass(cls, S3ODError), f"{module}.{name} does not derive from S3ODError"
    if module.startswith("synth_sod."):
        assert issubclass(cls, SynthSODError), f"{module}.{name} is not a SynthSODError"


def test_one_missing_dependency_error():
    """Catching the core class catches a missing evaluation extra too (there were two)."""
    from s3od.evaluation import MissingDependencyError as from_evaluation
    from s3od.evaluation.metrics import _import

    assert from_evaluation is MissingDependencyError
    with pytest.raises(MissingDependencyError, match=r"s3od\[eval\]"):
        _import("surely_not_an_installed_module_s3od")


def test_re_exports_keep_old_imports_working():
    from synth_sod.data_generation.llm import LLMError
    from synth_sod.data_generation.sharding import PipelineError as from_sharding
    from synth_sod.model_training.data import DataConfigError as from_data
    from synth_sod.model_training.train import ConfigError as from_train

    assert (from_sharding, from_data, from_train) == (PipelineError, DataConfigError, ConfigError)
    assert issubclass(LLMError, PipelineError)
    assert issubclass(ConfigError, ValueError) and issubclass(DataConfigError, ValueError)
