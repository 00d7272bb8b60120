"""Workspace defaults: where runs and caches go, the default recipe, SLURM defaults.

Read, highest precedence first, from `VLMTUNE_*` environment variables (`VLMTUNE_RUNS_DIR`,
`VLMTUNE_SLURM__PARTITION`, ...), `vlmtune.toml` in the current directory, and `[tool.vlmtune]` in
`pyproject.toml`. Relative paths are relative to the current directory, so a workspace is a folder.
Recipe keys (`VLMTUNE_TRAINING__LR`) are not settings: `recipe.py` reads those.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    PyprojectTomlConfigSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

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
            env_settings,
            TomlConfigSettingsSource(settings_cls),
            PyprojectTomlConfigSettingsSource(settings_cls, Path("pyproject.toml")),
        )


def load_settings() -> Settings:
    """The workspace settings. Raises UsageError when a workspace file or variable is invalid."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise UsageError(
            f"invalid workspace settings ({WORKSPACE_FILE}, [tool.vlmtune] or VLMTUNE_* variables): {problems}"
        ) from None
    except ValueError as exc:  # a malformed TOML file
        raise UsageError(f"cannot read workspace settings: {exc}") from None


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
