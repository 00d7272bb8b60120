"""Property-based fuzzing of recipe files and `--set` values: whatever a user writes, the answer is our
message and exit code 2 (or a valid recipe and 0), never a traceback."""

from __future__ import annotations

import string
from pathlib import Path

import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from vlmtune_cli.cli import app
from vlmtune_cli.config.schema import TABLES, Recipe

from ..conftest import RECIPES

runner = CliRunner()
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# Real key names mixed with near-misses, so the fuzzer reaches validation of every field, not only "unknown key".
KNOWN_KEYS = sorted({k for t in TABLES for k in Recipe.model_fields[t].annotation.model_fields} | set(TABLES))
key = st.one_of(st.sampled_from(KNOWN_KEYS), st.text(string.ascii_lowercase + "_", min_size=1, max_size=12))
scalar = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["frozen", "lora", "full", "all", "assistant", "04:00:00", "builtin:tiny-qwen2-vl", "auto"]),
)
value = st.recursive(
    scalar, lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(key, inner, max_size=3)), max_leaves=6
)
recipe_doc = st.dictionaries(
    st.one_of(st.sampled_from([*TABLES, "variant", "extends"]), key),
    st.one_of(value, st.dictionaries(key, value, max_size=5)),
    max_size=6,
)


def _assert_clean(result) -> None:
    assert result.exit_code in (0, 2), (result.exit_code, result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    if result.exit_code == 2:
        assert result.stderr.startswith("error:") or "Usage:" in result.stderr


@FUZZ
@given(doc=recipe_doc)
def test_fuzzed_recipe_files(tmp_path_factory, doc: dict) -> None:
    path = Path(tmp_path_factory.mktemp("fuzz")) / "fuzzed.toml"
    path.write_text(tomli_w.dumps(doc))
    _assert_clean(runner.invoke(app, ["train", str(path), "--dry-run"]))


@FUZZ
@given(text=st.text(max_size=200))
def test_fuzzed_recipe_bytes(tmp_path_factory, text: str) -> None:
    path = Path(tmp_path_factory.mktemp("fuzz")) / "fuzzed.toml"
    path.write_text(text)
    _assert_clean(runner.invoke(app, ["train", str(path), "--dry-run"]))


@FUZZ
@given(
    items=st.lists(
        st.tuples(
            st.lists(key, min_size=1, max_size=3).map(".".join), st.one_of(st.text(max_size=15), scalar.map(str))
        ),
        max_size=3,
    )
)
def test_fuzzed_set_overrides(items: list[tuple[str, str]]) -> None:
    args = ["train", str(RECIPES / "smoke.toml"), "--dry-run"]
    for dotted, raw in items:
        args += ["--set", f"{dotted}={raw}"]
    _assert_clean(runner.invoke(app, args))
