"""Loading and validating study configurations.

The JSON schema in ``workflow/schemas/config.schema.yaml`` is the single
description of every key: type, range, default and meaning. This module
reports every violation at once, one line per invalid value, naming the
key, the value and what is allowed, and rejects YAML files that repeat a
key (PyYAML would silently keep the last value).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A study configuration is invalid; the message lists every problem."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe YAML loader that rejects a key repeated in one mapping."""


def _construct_mapping(loader, node, deep=False):
    seen = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            line = key_node.start_mark.line + 1
            raise ConfigError(
                f"line {line}: key {key!r} appears twice in the same mapping "
                f"(first on line {seen[key]})"
            )
        seen[key] = key_node.start_mark.line + 1
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def parse_config(text: str | bytes, source: str = "config") -> dict[str, Any]:
    """Parse YAML text into a config mapping.

    Raises:
        ConfigError: the text is not UTF-8, not valid YAML, repeats a key, or
            is not a mapping at the top level.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as error:
            raise ConfigError(f"{source}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    try:
        values = yaml.load(text, Loader=_UniqueKeyLoader)
    except ConfigError as error:
        raise ConfigError(f"{source}: {error}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{source}: not valid YAML: {error}".replace("\n", " ")) from None
    except (ValueError, TypeError, RecursionError) as error:
        # PyYAML raises these for values it cannot construct, such as
        # out-of-range dates or unhashable keys.
        raise ConfigError(f"{source}: not valid YAML: {error}") from None
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys, got {type(values).__name__}")
    return values


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read and parse one config file; see :func:`parse_config`."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ConfigError(f"{path}: cannot read config file ({error.strerror})") from None
    return parse_config(data, str(path))


def load_schema(path: str | Path) -> dict[str, Any]:
    return yaml.safe_load(Path(path).read_text())


def _key_name(path) -> str:
    name = ""
    for part in path:
        if isinstance(part, int):
            name += f"[{part}]"
        elif name:
            name += f".{part}"
        else:
            name = str(part)
    return name or "(top level)"


def _describe(error) -> str:
    """Return one line for a jsonschema error: key, value and what is allowed."""
    key = _key_name(error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(allowed))
        return f"{key}: unknown key(s) {unknown}; allowed keys: {allowed}"
    if error.validator == "enum":
        return f"{key}: invalid value {error.instance!r}; allowed values: {error.validator_value}"
    if error.validator == "uniqueItems":
        return f"{key}: invalid value {error.instance!r}; items must not repeat"
    if error.validator == "not" and "multipleOf" in error.validator_value:
        return f"{key}: invalid value {error.instance!r}; must be an odd integer"
    description = error.schema.get("description", "")
    hint = f" ({description})" if description else ""
    return f"{key}: invalid value {error.instance!r}: {error.message}{hint}"


def config_errors(config: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    """Return one message per schema violation of ``config``, sorted by key."""
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda error: list(map(str, error.absolute_path)))
    return [_describe(error) for error in errors]


def check_config(config: dict[str, Any], schema_path: str | Path) -> None:
    """Raise :class:`ConfigError` listing every violation of the schema."""
    messages = config_errors(config, load_schema(schema_path))
    if messages:
        lines = "\n".join(f"  - {message}" for message in messages)
        raise ConfigError(f"invalid configuration ({len(messages)} problem(s)):\n{lines}")


def check_config_files(paths) -> None:
    """Raise :class:`ConfigError` if any config file repeats a key or is not valid YAML."""
    for path in paths:
        load_config_file(path)
