"""Configuration: one pydantic model per stage, loadable from YAML and overridable from the CLI.

Stage configs subclass `StageConfig`, which forbids unknown keys so a typo in a YAML file is an error
naming the key, not a silently ignored setting. The precedence is defaults < YAML file <
`--set key=value` overrides < explicit CLI flags (generated from the same fields, see cli_options).
Config files are looked up as given, then among the presets shipped in `edgereason/configs/`
(`-c cpu-smollm2` or `-c configs/cpu-smollm2.yaml` work from any directory).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

C = TypeVar("C", bound="StageConfig")

PRESETS_DIR = Path(__file__).resolve().parent / "configs"


class ConfigError(ValueError):
    """A configuration that cannot be loaded; the message names the file and the field."""


def find_config(path: str | Path) -> Path:
    """A config file as given, else a bundled preset (by file name, with or without .yaml)."""
    p = Path(path).expanduser()
    if p.is_file():
        return p
    name = p.name if p.suffix in (".yaml", ".yml") else f"{p.name}.yaml"
    candidates = [PRESETS_DIR / p, PRESETS_DIR / name]
    if len(p.parts) > 1 and p.parts[0] == "configs":  # the path as written in the docs, from elsewhere
        candidates.append(PRESETS_DIR.joinpath(*p.parts[1:]))
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    presets = ", ".join(sorted(q.stem for q in PRESETS_DIR.glob("*.yaml")))
    raise ConfigError(f"config file {p} does not exist (bundled presets: {presets})")


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


class StageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())

    @classmethod
    def load(
        cls: type[C],
        path: str | Path | None = None,
        overrides: list[str] | None = None,
        explicit: dict[str, Any] | None = None,
        **flat: Any,
    ) -> C:
        """Defaults, then the YAML file, then `key=value` overrides (dotted keys for sections), then
        explicit values (a nested dict, and keyword values that are not None)."""
        data: dict[str, Any] = {}
        source = "defaults"
        if path is not None:
            p = find_config(path)
            source = str(p)
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
            try:
                value = yaml.safe_load(raw) if raw.strip() else None
            except yaml.YAMLError:
                value = raw
            _set_dotted(data, key.strip(), value)
        data = deep_merge(data, explicit or {})
        data.update({k: v for k, v in flat.items() if v is not None})
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
