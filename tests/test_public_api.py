"""The public names: `tandem.__all__`, and every name the benchmarks and scripts import, keep
working across refactors (re-exports where a module moves)."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import tandem

ROOT = Path(__file__).resolve().parents[1]

PUBLIC = [
    "Backend", "BackendError", "BackendProtocolError", "BackendTimeout", "BackendUnavailable", "BudgetPolicy",
    "Capabilities", "CheckpointRecord", "ConfigError", "CostReport", "DecodingSettings", "EffortSetting",
    "GenerationRequest", "InputError", "Message", "ModelCost", "ModelError", "ModelInfo", "PipelineConfig",
    "Price", "Prompt", "ScoreResult", "StopPolicy", "StopRule", "Tandem", "TandemError", "TandemResult",
    "TokenStep", "TokenStream", "UnsupportedError", "Usage", "__version__",
]


def test_the_package_exports_exactly_its_public_names() -> None:
    assert sorted(tandem.__all__) == sorted(PUBLIC)
    for name in PUBLIC:
        assert getattr(tandem, name) is not None


def _imports(path: Path) -> list[tuple[str, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [(node.module, alias.name) for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
            and node.module and node.module.startswith("tandem") for alias in node.names]


def test_every_name_the_benchmarks_and_scripts_import_exists() -> None:
    files = sorted((ROOT / "benchmarks").glob("*.py")) + sorted((ROOT / "scripts").glob("*.py"))
    pairs = [(m, n) for f in files for m, n in _imports(f)]
    assert pairs, "no tandem imports found"
    missing = [f"{m}.{n}" for m, n in pairs if not hasattr(importlib.import_module(m), n)]
    assert missing == []
