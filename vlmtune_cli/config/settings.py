"""Workspace defaults: where runs and caches go, the default recipe, SLURM defaults.

Read, highest precedence first, from `VLMTUNE_*` environment variables (`VLMTUNE_RUNS_DIR`,
`VLMTUNE_SLURM__PARTITION`, ...), `vlmtune.toml` in the current directory, and `[tool.vlmtune]` in
`pyproject.toml`. Relative paths are relative to the current directory, so a workspace is a folder.
Recipe keys (`VLMTUNE_TRAINING__LR`) are not settings: `recipe.py` reads those. `VLMTUNE_SLURM__<KEY>` sets the
recipe's `[slurm] <key>` for every key of that table (`recipe.py`); of those, `partition`, `account` and `qos`
are also workspace defaults here (the same value either way), and the others (`VLMTUNE_SLURM__TIME`) are left
to the recipe rather than refused.

An unknown key in `vlmtune.toml` or `[tool.vlmtune]` is an error naming the file and the nearest valid key.
"""

from __future__ import annotations

import difflib
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    PyprojectTomlConfigSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from vlmtune_cli.config.schema import SlurmSection
from vlmtune_cli.errors import UsageError

WORKSPACE_FILE = "vlmtune.toml"


class SlurmDefaults(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    partition: str | None = None
    """Partition used when a recipe names none."""
    account: str | None = None
    """Account used when a recipe names none."""
    qos: str | None = None
    """Quality of service used when a recipe names none."""


class _WorkspaceEnv(EnvSettingsSource):
    """`VLMTUNE_*` variables, without the `VLMTUNE_SLURM__<KEY>` that only the recipe has (time, nodes, ...)."""

    def __call__(self) -> dict[str, Any]:
        data = super().__call__()
        slurm = data.get("slurm")
        if isinstance(slurm, dict):
            data["slurm"] = {k: v for k, v in slurm.items() if k in SlurmDefaults.model_fields}
        return data


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="VLMTUNE_",
        env_nested_delimiter="__",
        extra="ignore",  # VLMTUNE_TRAINING__LR and friends belong to the recipe, not to us
        toml_file=WORKSPACE_FILE,
        pyproject_toml_table_header=("tool", "vlmtune"),
        use_attribute_docstrings=True,
    )

    runs_dir: Path = Path("runs")
    """Runs go to `<runs_dir>/<variant>/`."""
    cache_dir: Path = Path(".cache/vlmtune")
    """Built-in tiny models and tokenised datasets are cached here."""
    default_recipe: Path | None = None
    """Recipe used when a command is given none."""
    slurm: SlurmDefaults = SlurmDefaults()
    """SLURM defaults under the recipe's `[slurm]` table."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            _WorkspaceEnv(settings_cls),
            TomlConfigSettingsSource(settings_cls),
            PyprojectTomlConfigSettingsSource(settings_cls, Path("pyproject.toml")),
        )


def load_settings() -> Settings:
    """The workspace settings. Raises UsageError when a workspace file or variable is invalid."""
    check_workspace_keys()
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise UsageError(
            f"invalid workspace settings ({WORKSPACE_FILE}, [tool.vlmtune] or VLMTUNE_* variables): {problems}"
        ) from None
    except ValueError as exc:  # a malformed TOML file
        raise UsageError(f"cannot read workspace settings: {exc}") from None


def check_workspace_keys(directory: Path = Path()) -> None:
    """UsageError naming the file and the nearest valid key for an unknown key in the workspace files.

    pydantic-settings would drop such a key silently (`extra="ignore"` is needed for the environment, where
    `VLMTUNE_TRAINING__LR` belongs to the recipe), so a typo such as `runz_dir` must be caught here.
    """
    problems: list[str] = []
    for label, table in _workspace_tables(directory):
        for key, value in table.items():
            if key not in Settings.model_fields:
                problems.append(f"{label}: {key}: unknown key{_did_you_mean(key, list(Settings.model_fields))}")
            elif key == "slurm" and isinstance(value, dict):
                for sub in value:
                    if sub in SlurmDefaults.model_fields:
                        continue
                    if sub in SlurmSection.model_fields:
                        problems.append(
                            f"{label}: slurm.{sub}: not a workspace default; set it in the recipe's [slurm] table"
                        )
                    else:
                        near = _did_you_mean(sub, list(SlurmDefaults.model_fields), prefix="slurm.")
                        problems.append(f"{label}: slurm.{sub}: unknown key{near}")
    if problems:
        raise UsageError(
            "invalid workspace settings:\n" + "\n".join(f"  {p}" for p in problems),
            hint=f"workspace keys: {', '.join(Settings.model_fields)}; "
            f"in [slurm]: {', '.join(SlurmDefaults.model_fields)}",
        )


def _workspace_tables(directory: Path) -> list[tuple[str, dict[str, Any]]]:
    tables = []
    for name, header in ((WORKSPACE_FILE, ()), ("pyproject.toml", ("tool", "vlmtune"))):
        path = directory / name
        if not path.is_file():
            continue
        try:
            data: Any = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise UsageError(f"cannot read workspace settings: {path}: {exc}") from None
        for part in header:
            data = data.get(part, {}) if isinstance(data, dict) else {}
        if isinstance(data, dict):
            tables.append((name if not header else f"{name} [{'.'.join(header)}]", data))
    return tables


def _did_you_mean(key: str, valid: list[str], prefix: str = "") -> str:
    match = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    return f"; did you mean {prefix}{match[0]}?" if match else ""


def resolve_recipe_path(recipe: Path | None, settings: Settings) -> Path:
    """The recipe named on the command line, else the workspace default; UsageError when there is neither."""
    if recipe is not None:
        return recipe
    if settings.default_recipe is not None:
        return settings.default_recipe
    raise UsageError(
        "no recipe given and no workspace default",
        hint=f"name one (`vlmtune train recipes/smoke.toml`) or set default_recipe in {WORKSPACE_FILE}",
    )
