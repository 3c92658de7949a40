"""Reading the users API's settings: pydantic-settings' environment source over any mapping
(the process's environment, or a test's), with the NAME_FILE convention of Docker secrets
(a file holding the value), and a refused setting said in words, named as in the
environment. ``usersapi.Settings`` declares the settings themselves on EnvironmentSettings.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import ClassVar, Self
from urllib.parse import urlsplit, urlunsplit

from pydantic import ValidationError
from pydantic_core import ErrorDetails
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from pydantic_settings.sources.utils import parse_env_vars


class ConfigError(RuntimeError):
    """The environment does not describe a usable configuration."""


def with_secret_files(env: Mapping[str, str], secrets: Collection[str]) -> dict[str, str]:
    """ENV with each NAME_FILE of SECRETS replaced by NAME, the file's content without its
    trailing newline."""
    values = dict(env)
    for name in secrets:
        path = values.pop(f"{name}_FILE", None)
        if path is None:
            continue
        if name in values:
            raise ConfigError(f"set {name} or {name}_FILE, not both")
        try:
            values[name] = Path(path).read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise ConfigError(f"{name}_FILE: cannot read {path}: {reason}") from None
    return values


class EnvironmentSource(EnvSettingsSource):
    """pydantic-settings' environment source over ENV, with NAME_FILE for SECRETS. Names
    match fields in any letter case; an empty value counts as unset."""

    def __init__(
        self, settings_cls: type[BaseSettings], env: Mapping[str, str], secrets: Collection[str]
    ) -> None:
        self.env = with_secret_files(env, secrets)
        super().__init__(settings_cls, case_sensitive=False, env_ignore_empty=True)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(self.env, case_sensitive=False, ignore_empty=True)


def setting_error(error: ErrorDetails, secrets: Collection[str]) -> str:
    """One refused setting in words. Its value is repeated only if it is not a secret."""
    if not error["loc"]:  # a rule of the settings as a whole
        return error["msg"].removeprefix("Value error, ")
    name = str(error["loc"][0]).upper()
    ctx = error.get("ctx", {})
    got = "" if name in secrets else f", got {error['input']!r}"
    match error["type"]:
        case "int_parsing" | "int_type":
            return f"{name} must be a whole number{got}"
        case "greater_than" | "greater_than_equal":
            least = ctx["gt"] + 1 if "gt" in ctx else ctx["ge"]
            return f"{name} must be at least {least}{got}"
        case "less_than_equal":
            return f"{name} must be at most {ctx['le']}{got}"
        case "literal_error":
            expected = ctx["expected"].replace("'", "").replace(" or ", ", ")
            return f"{name} must be one of {expected}{got}"
        case _:
            return f"{name}: {error['msg'].removeprefix('Value error, ')}"


def config_error(exc: ValidationError, secrets: Collection[str]) -> ConfigError:
    return ConfigError("; ".join(setting_error(error, secrets) for error in exc.errors()))


class EnvironmentSettings(BaseSettings):
    """Settings that from_env() reads from a mapping of variables (the process's environment
    by default): each field from the variable of its name in upper case, the secrets named
    in SECRETS also as NAME_FILE. Nothing else is read: settings made directly (as tests
    do) hold exactly what they are given."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore")
    SECRETS: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],  # noqa: ARG003 - the signature pydantic calls
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,  # noqa: ARG003
        dotenv_settings: PydanticBaseSettingsSource,  # noqa: ARG003
        file_secret_settings: PydanticBaseSettingsSource,  # noqa: ARG003
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Self:
        """The settings of ENV; ConfigError says in words what is wrong."""
        values = EnvironmentSource(cls, os.environ if env is None else env, cls.SECRETS)()
        try:
            return cls(**values)
        except ValidationError as exc:
            raise config_error(exc, cls.SECRETS) from None


def redact_uri(uri: str) -> str:
    """The URI with any password replaced, safe to log."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))
