"""The benchmarks' runner reads every target out of each benchmark's JSON (benchmarks/run_all.py)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import run_all  # noqa: E402


def test_targets_are_found_wherever_a_benchmark_puts_them():
    result = {
        "targets": {
            "fixed_s": {"value": 1.2, "bound": 1.5, "ok": True},
            "auto_rate": {"value": 9, "bound": 21, "ok": False},
        },
        "meets_bound": True,
        "within_bound": {"png": True, "jpeg": False},
        "big": {"meets_ls_l_target": False, "ls_l_ms": {"a": 3}},
        "meets": "not a verdict",
    }
    found = {name: (value, bound, ok) for name, value, bound, ok in run_all.checks(result)}
    assert found == {
        "fixed_s": (1.2, 1.5, True),
        "auto_rate": (9, 21, False),
        "meets_bound": (True, None, True),
        "within_bound.png": (True, None, True),
        "within_bound.jpeg": (False, None, False),
        "big.meets_ls_l_target": (False, None, False),
    }
    table = run_all.markdown([("index", 3.0, "", run_all.checks(result)), ("live", 1.0, "exit 1", [])], quick=True)
    assert "| index | auto_rate | 9 | 21 | NO |" in table and "| live | (did not run: exit 1) | | | no |" in table


def test_every_benchmark_it_names_exists_or_is_skipped_knowingly():
    here = Path(run_all.__file__).parent
    missing = [name for name in run_all.BENCHMARKS if not run_all.script(name).exists()]
    assert not missing, missing
    assert run_all.script("index_1mp") == here / "bench_index.py"
    assert {p.stem.removeprefix("bench_") for p in here.glob("bench_*.py")} <= set(run_all.BENCHMARKS)
