"""The README's generated results block equals what ``benchmarks/readme_tables.py`` renders from
the committed result files (the README says ``--check`` guards it; this runs that check)."""
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_results_block_is_rendered_from_the_result_files():
    spec = importlib.util.spec_from_file_location("readme_tables", ROOT / "benchmarks" / "readme_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--check"]) == 0, "README.md is stale: run `python benchmarks/readme_tables.py` and commit"
