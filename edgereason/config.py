"""Configuration: one pydantic model per stage, loadable from YAML and overridable from the CLI.

Stage configs (train, export, serve, eval) subclass `StageConfig`, which forbids unknown keys so a
typo in a YAML file is an error naming the key, not a silently ignored setting. The precedence is
defaults < YAML file < `--set key=value` overrides < explicit CLI flags.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

C = TypeVar("C", bound="StageConfig")


class ConfigError(ValueError):
    """A configuration that cannot be loaded; the message names the file and the field."""


class StageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())

    @classmethod
    def load(
        cls: type[C],
        path: str | Path | None = None,
        overrides: list[str] | None = None,
        **explicit: Any,
    ) -> C:
        """Defaults, then the YAML file, then `key=value` overrides (dotted keys for nesting), then
        explicit keyword values that are not None."""
        data: dict[str, Any] = {}
        source = "defaults"
        if path is not None:
            source = str(path)
            p = Path(path)
            if not p.is_file():
                raise ConfigError(f"config file {p} does not exist")
            try:
                loaded = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
            except yaml.YAMLError as e:
                raise ConfigError(f"{p}: invalid YAML: {e}") from None
            if not isinstance(loaded, dict):
                raise ConfigError(f"{p}: the top level must be a mapping of field: value")
            data.update(loaded)
        for item in overrides or []:
            key, sep, raw = item.partition("=")
            if not sep or not key.strip():
                raise ConfigError(f"override {item!r} must look like key=value")
            _set_dotted(data, key.strip(), yaml.safe_load(raw) if raw.strip() else None)
        data.update({k: v for k, v in explicit.items() if v is not None})
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            problems = "; ".join(
                f"{'.'.join(str(x) for x in err['loc']) or '<root>'}: {err['msg']}" for err in e.errors()
            )
            raise ConfigError(f"{cls.__name__} from {source}: {problems}") from None

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {key!r}: {part!r} is not a section")
    node[parts[-1]] = value
