"""The one typed config tree, loaded from TOML with defaults for everything.

```toml
timezone = "Asia/Shanghai"
[labels]      # features.labels.LabelConfig
horizon_days = 90
[training]    # training.config.TrainConfig
seed = 7
[ranking]     # serving.config.RankConfig
exploration_share = 0.1
[engine]      # features.build.EngineConfig (DuckDB threads / memory / spill for features, train, rank, serve)
memory_limit = "2GB"
```
"""

from __future__ import annotations

import hashlib
import json
import os
import tomllib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from features.build import EngineConfig
from features.contract import DEFAULT_TIMEZONE, ContractConfig, check_timezone
from features.labels import LabelConfig
from serving.config import RankConfig
from serving.issued import LoopConfig
from training.config import TrainConfig


class Config(BaseModel):
    """Everything a run needs besides paths; every field has a default."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    timezone: str = Field(DEFAULT_TIMEZONE, description="business time zone for naive timestamps and dates")
    contract: ContractConfig = ContractConfig()
    labels: LabelConfig = LabelConfig()
    training: TrainConfig = TrainConfig()
    ranking: RankConfig = RankConfig()
    engine: EngineConfig = EngineConfig()
    loop: LoopConfig = LoopConfig()

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        return check_timezone(value)

    def digest(self) -> str:
        """A short hash of the full config, recorded with runs and ranked lists."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


CACHE_ENV = "KOC_CACHE_DIR"


def cache_dir() -> Path:
    """Folder of re-computable derived state (data fingerprints), never inside a data folder.

    `$KOC_CACHE_DIR`, else `$XDG_CACHE_HOME/kocrank`, else `~/.cache/kocrank`. Deleting it is safe.
    """
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kocrank"


class ConfigError(ValueError):
    """The config file is missing, is not TOML, or names an unknown or invalid setting."""


def load_config(path: str | Path | None = None) -> Config:
    """Defaults, overridden by the TOML file at `path` when given."""
    if path is None:
        return Config()
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config file {path} is not valid TOML: {error}") from None
    try:
        return Config.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(f"invalid config {path}: {error}") from None
