"""Command-line options generated from a stage's pydantic config: one source per setting.

`stage_command(Config, run)` builds a typer command whose flags are the config's fields (nested
sections flattened, each section's `flag_prefix` in front), with the field's description as help,
plus `--config/-c FILE` and `--set key=value`. Precedence: defaults < YAML < --set < explicit flags.
A field can name its own flag (`json_schema_extra={"flag": "--upstream"}`); dict-valued fields are
set through YAML or --set only.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional, TypeVar, get_args, get_origin

import typer
from pydantic import BaseModel

from edgereason.config import ConfigError, StageConfig
from edgereason.console import make_console, print_error

C = TypeVar("C", bound=StageConfig)
_SCALARS = (int, float, str, bool, Path)


@dataclass(frozen=True)
class OptionSpec:
    path: tuple[str, ...]  # field names from the config root
    param: str  # the Python parameter name
    decls: tuple[str, ...]  # "--flag", "-f"
    annotation: Any
    help: str
    repeatable: bool


def _unwrap_optional(tp: Any) -> Any:
    if get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _cli_type(tp: Any) -> tuple[Any, bool] | None:
    """(typer annotation, repeatable) for a field type, or None when it has no flag form."""
    tp = _unwrap_optional(tp)
    if tp in _SCALARS or get_origin(tp) is Literal:
        return Optional[tp], False  # noqa: UP045 - typer reads typing.Optional
    if get_origin(tp) is list:
        (inner,) = get_args(tp) or (str,)
        inner = _unwrap_optional(inner)
        if get_origin(inner) is Literal:  # typer takes no list of Literal: strings, checked by pydantic
            return list[str], True
        if inner in _SCALARS:
            return list[inner], True  # type: ignore[valid-type]
    return None


def _default_text(value: Any) -> str:
    if isinstance(value, BaseModel) or value in (None, [], {}):
        return ""
    return f" [default: {value}]"


def option_specs(config_cls: type[BaseModel], short: dict[str, str] | None = None,
                 exclude: tuple[str, ...] = ()) -> list[OptionSpec]:
    """The flags of a config class, sections flattened; raises if two fields would share a flag."""
    short = short or {}
    specs: list[OptionSpec] = []

    def walk(cls: type[BaseModel], prefix: tuple[str, ...], flag_prefix: str) -> None:
        for name, f in cls.model_fields.items():
            path = (*prefix, name)
            dotted = ".".join(path)
            if dotted in exclude:
                continue
            tp = _unwrap_optional(f.annotation)
            if isinstance(tp, type) and issubclass(tp, BaseModel):
                walk(tp, path, getattr(tp, "flag_prefix", ""))
                continue
            cli = _cli_type(f.annotation)
            if cli is None:
                continue
            extra = f.json_schema_extra if isinstance(f.json_schema_extra, dict) else {}
            flag = str(extra.get("flag") or f"--{flag_prefix}{name.replace('_', '-')}")
            annotation, repeatable = cli
            is_bool = _unwrap_optional(f.annotation) is bool
            decls: tuple[str, ...] = (f"{flag}/--no-{flag[2:]}",) if is_bool else (flag,)
            if dotted in short:
                decls = (*decls, short[dotted])
            default = f.default if f.default_factory is None else None
            specs.append(OptionSpec(path, "_".join(path), decls, annotation,
                                    (f.description or "") + _default_text(default), repeatable))

    walk(config_cls, (), "")
    seen: dict[str, str] = {}
    for s in specs:
        for d in s.decls:
            for flag in d.split("/"):
                if flag in seen:
                    raise ValueError(f"{config_cls.__name__}: {'.'.join(s.path)} and {seen[flag]} both want {flag}")
                seen[flag] = ".".join(s.path)
    return specs


def explicit_values(specs: list[OptionSpec], values: dict[str, Any]) -> dict[str, Any]:
    """The flags the user gave, as a nested dict (unset flags are None or empty lists)."""
    out: dict[str, Any] = {}
    for s in specs:
        v = values.get(s.param)
        if v is None or (s.repeatable and not v):
            continue
        node = out
        for part in s.path[:-1]:
            node = node.setdefault(part, {})
        node[s.path[-1]] = list(v) if s.repeatable else v
    return out


def stage_command(config_cls: type[C], run: Callable[[C], None], *, help: str,
                  short: dict[str, str] | None = None, exclude: tuple[str, ...] = (),
                  errors: tuple[type[Exception], ...] = ()) -> Callable[..., None]:
    """A typer command: flags from `config_cls`, then `run(config)`. `errors` are the exceptions
    that mean bad input: printed as one line, exit status 2."""
    specs = option_specs(config_cls, short, exclude)
    clash = {s.param for s in specs} & {"config", "set_"}
    if clash:
        raise ValueError(f"{config_cls.__name__}: field(s) {sorted(clash)} clash with the --config/--set options")
    console = make_console(stderr=True)
    kw = inspect.Parameter.KEYWORD_ONLY
    params = [
        inspect.Parameter("config", kw, annotation=Optional[Path],  # noqa: UP045 - typer reads typing.Optional
                          default=typer.Option(None, "--config", "-c", help=f"YAML {config_cls.__name__} file, or a bundled preset name.")),
        inspect.Parameter("set_", kw, annotation=list[str],
                          default=typer.Option([], "--set", help="Override any field: key=value, dotted for sections (repeatable).")),
    ]
    params += [inspect.Parameter(s.param, kw, annotation=s.annotation,
                                 default=typer.Option([] if s.repeatable else None, *s.decls, help=s.help, show_default=False))
               for s in specs]

    def command(**values: Any) -> None:
        try:
            cfg = config_cls.load(values.pop("config"), values.pop("set_"), explicit=explicit_values(specs, values))
            run(cfg)
        except (ConfigError, *errors) as e:  # type: ignore[misc]  # mypy cannot type a starred tuple here
            print_error(console, e)
            raise typer.Exit(2) from None

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__doc__ = help
    command.__name__ = f"{config_cls.__name__.removesuffix('Config').lower()}_command"
    return command
