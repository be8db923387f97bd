"""Loading the experiment configuration: presets + ``params.yaml`` + dot-list overrides → ``IrisConfig``.

This is the project's only OmegaConf user. OmegaConf reads the YAML files, parses dot-list overrides
(``world_model.transformer.num_layers=4``) and merges them; the result is then checked field by field
against the frozen dataclasses of :mod:`iris_core.config`, so every mistake is reported with the
dotted path of the key: unknown keys (with the closest valid key), wrong types, out-of-range values.

Override syntax follows the paper code: ``env=<preset>`` and ``params=<preset>`` pick presets from
``config/env`` and ``config/params``; every other ``key=value`` sets a value.

Nothing is silently ignored (docs/configuration.md): YAML files are read with a loader that refuses
a key given twice, an empty file is an error, removed keys are named as such, presets of different
games are refused unless ``allow_mixed_presets=true``, and keys that follow the frame size
(``env.train.size``) are filled in from it.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from iris_core.config import (
    ENV_KINDS,
    FRAME_SIZE_FOLLOWERS,
    ConfigError,
    IrisConfig,
    config_to_dict,
    prefix_config_error,
)
from pipelines.atomic import atomic_write_text

DEFAULT_ENV = "crafter"
DEFAULT_PARAMS = "crafter"
PRESET_GROUPS = ("env", "params")
BASE_PARAMS = "crafter"  # the complete preset that partial presets are merged over (unless preset.base)
# A selection key like env=/params=: lets env and params presets of different games be combined.
ALLOW_MIXED = "allow_mixed_presets"
SELECTION_KEYS = (*PRESET_GROUPS, ALLOW_MIXED)
PRESET_META = "preset"  # params presets: {env: <env preset it is made for>, base: <preset under it>}
KIND_NAMES = {"crafter": "Crafter", "atari": "Atari"}

# Keys that once existed but did nothing, with why: a preset, file or override that still sets one is
# refused naming it as removed (docs/configuration.md).
REMOVED_KEYS = {
    "common.do_checkpoint": "checkpoints are outputs of the pipeline's stages and are always written",
    "collection.train.num_episodes_to_save": (
        "every collected episode is stored (data/episodes/<i>.zarr); videos of test episodes: "
        "collection.test.num_episodes_to_save"
    ),
    "env.keymap": "`iris play` picks its keys from env.train.kind",
}


class ConfigLoadError(ConfigError):
    """A preset, file or override could not be read (as opposed to a bad value)."""


def config_dir() -> Path:
    """Folder holding ``env/`` and ``params/`` presets: ``$IRIS_CONFIG_DIR`` or the project's ``config/``."""
    env_dir = os.environ.get("IRIS_CONFIG_DIR")
    if env_dir:
        return Path(env_dir)
    return Path(__file__).resolve().parent.parent / "config"


def available_presets(group: str, root: Path | None = None) -> list[str]:
    folder = (root or config_dir()) / group
    return sorted(p.stem for p in folder.glob("*.yaml"))


# ---------------------------------------------------------------------------------------------
# Reading YAML and overrides
# ---------------------------------------------------------------------------------------------


_MERGE_TAG = "tag:yaml.org,2002:merge"


def _duplicate_key(
    node: yaml.Node, path: str = "", seen: set[int] | None = None
) -> tuple[str, int, int] | None:
    """The first key given twice in one mapping of a composed YAML document: (dotted key, line of
    its first occurrence, line of the second), 1-based; ``None`` when there is none."""
    seen = set() if seen is None else seen
    if id(node) in seen:  # an alias of a node already walked
        return None
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first: dict[tuple[str, str], int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            name = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else "?"
            dotted = f"{path}.{name}" if path else name
            if isinstance(key_node, yaml.ScalarNode):
                ident = (key_node.tag, key_node.value)
                if ident in first:
                    return dotted, first[ident], key_node.start_mark.line + 1
                first[ident] = key_node.start_mark.line + 1
            found = _duplicate_key(value_node, dotted, seen)
            if found is not None:
                return found
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            found = _duplicate_key(item, f"{path}[{index}]", seen)
            if found is not None:
                return found
    return None


def load_yaml_strict(text: str, source: str) -> Any:
    """``yaml.safe_load``, refusing a key given twice in one mapping (PyYAML silently keeps the
    last one). Errors are :class:`ConfigLoadError` naming the key and ``source``."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        duplicate = _duplicate_key(node) if node is not None else None
        if duplicate is not None:
            key, first, again = duplicate
            lines = f" (lines {first} and {again})" if first != again else ""
            raise ConfigLoadError(
                key,
                f"duplicate key in {source}{lines}; YAML would silently keep the last one: "
                "delete one of them",
            )
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None else source
        problem = getattr(error, "problem", None) or str(error)
        raise ConfigLoadError("yaml", f"invalid YAML at {where}: {problem}") from None


def _read_yaml(path: Path, what: str) -> DictConfig:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigLoadError(what, f"file not found: {path}") from None
    except OSError as error:
        raise ConfigLoadError(what, f"cannot read {path}: {error.strerror}") from None
    try:
        data = load_yaml_strict(text, str(path))
    except ConfigLoadError as error:
        if error.key == "yaml":
            raise ConfigLoadError(what, error.message) from None
        raise
    if data is None:
        raise ConfigLoadError(
            what,
            f"{path} is empty: it must hold a mapping of configuration keys"
            + (" (write one with `iris config write`)" if what == "params_file" else ""),
        )
    if not isinstance(data, dict):
        raise ConfigLoadError(what, f"{path} must hold a mapping of keys, got {type(data).__name__}")
    try:
        loaded = OmegaConf.create(data)
    except OmegaConfBaseException as error:
        raise ConfigLoadError(what, f"{path}: {error}") from None
    assert isinstance(loaded, DictConfig)
    return loaded


def _load_preset(group: str, name: str, root: Path) -> DictConfig:
    path = root / group / f"{name}.yaml"
    if not path.is_file():
        choices = ", ".join(available_presets(group, root)) or "(none)"
        raise ConfigLoadError(group, f"unknown preset {name!r}; available: {choices}")
    return _read_yaml(path, group)


def split_overrides(overrides: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """Separate preset selections (``env=atari``, ``allow_mixed_presets=true``) from value
    overrides (``a.b=1``)."""
    presets: dict[str, str] = {}
    values: list[str] = []
    for item in overrides:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigLoadError(key or item, f"override {item!r} is not of the form key=value")
        if key in SELECTION_KEYS:
            presets[key] = value.strip()
        else:
            values.append(item)
    return presets, values


def _parse_overrides(values: Sequence[str]) -> DictConfig:
    for item in values:  # a mapping value written with a key twice: {a: 1, a: 2}
        key, _, value = item.partition("=")
        try:
            load_yaml_strict(value, f"the override {item!r}")
        except ConfigLoadError as error:
            if error.key != "yaml":
                raise ConfigLoadError(f"{key.strip()}.{error.key}", error.message) from None
    try:
        parsed = OmegaConf.from_dotlist(list(values))
    except (OmegaConfBaseException, yaml.YAMLError) as error:
        problem = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ConfigLoadError("overrides", f"cannot parse {list(values)}: {problem}") from None
    return parsed


def _parse_flag(key: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("true", "yes", "1"):
        return True
    if lowered in ("false", "no", "0"):
        return False
    raise ConfigLoadError(key, f"expected true or false, got {value!r}")


# ---------------------------------------------------------------------------------------------
# Checking a plain dict against the dataclass schema
# ---------------------------------------------------------------------------------------------


def _all_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(cls):
        path = f"{prefix}{f.name}"
        keys.append(path)
        hint = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(hint):
            keys.extend(_all_keys(hint, f"{path}."))  # type: ignore[arg-type]
    return keys


def _unknown_key_error(cls: type, key: str, path: str) -> ConfigError:
    full = f"{path}.{key}" if path else key
    if full in REMOVED_KEYS:
        return ConfigError(full, f"unknown key: it was removed ({REMOVED_KEYS[full]}); delete it")
    local = [f.name for f in dataclasses.fields(cls)]
    close = difflib.get_close_matches(key, local, n=1, cutoff=0.6)
    if close:
        hint = f"did you mean '{path + '.' if path else ''}{close[0]}'?"
    else:
        everywhere = difflib.get_close_matches(full, _all_keys(IrisConfig), n=1, cutoff=0.6)
        hint = f"did you mean '{everywhere[0]}'?" if everywhere else f"valid keys here: {', '.join(local)}"
    return ConfigError(full, f"unknown key; {hint}")


def _describe(value: object) -> str:
    return f"{value!r} ({type(value).__name__})"


def _convert(value: Any, hint: Any, path: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        (inner,) = [o for o in options if o is not type(None)]
        return _convert(value, inner, path)
    if value is None:
        raise ConfigError(path, f"must not be null (expected {getattr(hint, '__name__', hint)})")
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, Mapping):
            raise ConfigError(path, f"expected a mapping of keys, got {_describe(value)}")
        return build_dataclass(hint, value, path)  # type: ignore[arg-type]
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, list | tuple):
            raise ConfigError(path, f"expected a list, got {_describe(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{path}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(path, f"expected a list of {len(args)} values, got {len(value)}")
        return tuple(_convert(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(path, f"expected true or false, got {_describe(value)}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(path, f"expected an integer, got {_describe(value)}")
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(path, f"expected a number, got {_describe(value)}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(path, f"expected a string, got {_describe(value)}")
    raise TypeError(f"{path}: unsupported schema type {hint!r}")  # a bug in the schema, not user input


def build_dataclass(cls: type, data: Mapping[str, Any], path: str = "") -> Any:
    """Instantiate ``cls`` from a plain mapping, checking keys and types; errors name the key path."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            raise _unknown_key_error(cls, str(key), path)
    kwargs = {
        key: _convert(value, hints[key], f"{path}.{key}" if path else key) for key, value in data.items()
    }
    try:
        return cls(**kwargs)
    except ConfigError as error:
        raise prefix_config_error(error, path) from None


# ---------------------------------------------------------------------------------------------
# The entry point
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParamsPreset:
    """A params preset file: its values, the env preset it is made for, the preset it completes."""

    name: str
    values: DictConfig  # everything but the ``preset`` and ``env`` sections
    env_values: DictConfig | None  # its ``env`` section: overrides of the env preset's values
    env: str  # the env preset it is made for (``env=`` defaults to it)
    base: str | None  # the preset whose values fill the keys it does not list


def load_params_preset(name: str, root: Path | None = None) -> ParamsPreset:
    root = root or config_dir()
    cfg = _load_preset("params", name, root)
    where = root / "params" / f"{name}.yaml"
    meta: Any = {}
    if PRESET_META in cfg:
        meta = OmegaConf.to_container(cfg[PRESET_META], resolve=True)
        del cfg[PRESET_META]
    if not isinstance(meta, dict) or set(meta) - {"env", "base"}:
        raise ConfigLoadError(PRESET_META, f"in {where}: expected a mapping with the keys env and base")
    env = meta.get("env", DEFAULT_ENV)
    if not isinstance(env, str) or not (root / "env" / f"{env}.yaml").is_file():
        choices = ", ".join(available_presets("env", root))
        raise ConfigLoadError(
            f"{PRESET_META}.env", f"in {where}: no env preset {env!r}; available: {choices}"
        )
    default_base = (
        BASE_PARAMS if name != BASE_PARAMS and (root / "params" / f"{BASE_PARAMS}.yaml").is_file() else None
    )
    base = meta.get("base", default_base)
    if base is not None and (not isinstance(base, str) or base == name):
        raise ConfigLoadError(
            f"{PRESET_META}.base", f"in {where}: must name another params preset, got {base!r}"
        )
    env_values = None
    if "env" in cfg:
        env_values = cfg["env"]
        if not isinstance(env_values, DictConfig):
            raise ConfigLoadError("env", f"in {where}: expected a mapping of env keys")
        del cfg["env"]
    return ParamsPreset(name, cfg, env_values, env, base)


def _params_chain(name: str, root: Path) -> list[ParamsPreset]:
    """The preset and the presets it completes, the most basic first."""
    chain = [load_params_preset(name, root)]
    while chain[0].base is not None:
        if chain[0].base in {p.name for p in chain}:
            names = " -> ".join(p.name for p in reversed(chain))
            raise ConfigLoadError(f"{PRESET_META}.base", f"presets complete each other in a cycle: {names}")
        chain.insert(0, load_params_preset(chain[0].base, root))
    return chain


def env_kind_of(env: str, root: Path | None = None) -> str:
    """The ``train.kind`` of an env preset."""
    kind = OmegaConf.select(_load_preset("env", env, root or config_dir()), "train.kind", default="crafter")
    return str(kind)


def _game(kind: str) -> str:
    return KIND_NAMES.get(kind, repr(kind))


def _article(word: str) -> str:
    return f"{'an' if word[:1].lower() in 'aeiou' else 'a'} {word}"


def _check_one_game(tree: Mapping[str, Any], params: ParamsPreset, env: str, root: Path) -> None:
    """Refuse a params preset made for one game with an env of another (``allow_mixed_presets``)."""
    params_kind = env_kind_of(params.env, root)
    env_tree = tree.get("env")
    train = env_tree.get("train") if isinstance(env_tree, Mapping) else None
    kind = train.get("kind") if isinstance(train, Mapping) else None
    if kind not in ENV_KINDS or kind == params_kind:  # an unknown kind: the schema check names it
        return
    env_kind = env_kind_of(env, root)
    chosen = (
        f"env={env} is {_game(env_kind)}" if kind == env_kind else f"env.train.kind={kind} is {_game(kind)}"
    )
    fitting = [
        name
        for name in available_presets("params", root)
        if env_kind_of(load_params_preset(name, root).env, root) == kind
    ]
    hint = (
        f"params presets for {_game(kind)}: {', '.join(fitting)}"
        if fitting
        else f"no params preset is made for {_game(kind)}"
    )
    raise ConfigError(
        "params",
        f"params={params.name} is {_article(_game(params_kind))} preset but {chosen}: use presets of "
        f"one game ({hint}), or add {ALLOW_MIXED}=true to mix them on purpose",
    )


def merged_config(
    env: str | None = None,
    params: str | None = None,
    overrides: Sequence[str] = (),
    params_file: str | Path | None = None,
    root: Path | None = None,
) -> dict[str, Any]:
    """The merged, plain (interpolation-free) config tree before derivation.

    With ``params_file`` the file is the base (a workspace's ``params.yaml``); otherwise the env and
    params presets. ``env=``/``params=`` inside ``overrides`` select presets too. Without ``env``
    the params preset's own env preset is taken (``preset.env``); without ``params`` the params
    preset named like the env preset, else Crafter's. Presets of different games are refused
    unless ``allow_mixed_presets=true`` is among the overrides.
    """
    root = root or config_dir()
    presets, values = split_overrides(overrides)
    env = presets.get("env", env)
    params = presets.get("params", params)
    allow_mixed = _parse_flag(ALLOW_MIXED, presets[ALLOW_MIXED]) if ALLOW_MIXED in presets else False
    layers: list[DictConfig] = []
    chosen: tuple[ParamsPreset, str] | None = None
    if params_file is not None:
        if env is not None or params is not None:
            raise ConfigLoadError("params", "give either a params file or presets, not both")
        if ALLOW_MIXED in presets:
            raise ConfigLoadError(ALLOW_MIXED, "applies to presets (env=, params=), not to a params file")
        layers.append(_read_yaml(Path(params_file), "params_file"))
    else:
        if params is None:
            params = (
                env if env is not None and (root / "params" / f"{env}.yaml").is_file() else DEFAULT_PARAMS
            )
        # Presets may list only what differs from a complete preset (preset.base, the paper's Crafter
        # values by default): merging them over it makes every written params.yaml complete (each
        # key a DVC param).
        chain = _params_chain(params, root)
        env = env or chain[-1].env
        layers.extend(preset.values for preset in chain)
        layers.append(OmegaConf.create({"env": _load_preset("env", env, root)}))
        layers.extend(OmegaConf.create({"env": p.env_values}) for p in chain if p.env_values is not None)
        chosen = (chain[-1], env)
    layers.append(_parse_overrides(values))
    try:
        merged = OmegaConf.merge(*layers)
        container = OmegaConf.to_container(merged, resolve=True)
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None) or "config"
        raise ConfigLoadError(str(key), str(error).splitlines()[0]) from None
    assert isinstance(container, dict)
    tree = {str(k): v for k, v in container.items()}
    if chosen is not None and not allow_mixed:
        _check_one_game(tree, chosen[0], chosen[1], root)
    return tree


def follow_frame_size(tree: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a merged tree with the keys that follow the frame size (``env.train.size``) filled
    in where they are null or absent (:data:`iris_core.config.FRAME_SIZE_FOLLOWERS`)."""
    out = copy.deepcopy(dict(tree))
    env = out.get("env")
    train = env.get("train") if isinstance(env, dict) else None
    size = train.get("size") if isinstance(train, dict) else None
    if not isinstance(size, int) or isinstance(size, bool):
        return out  # the schema check reports it
    for key in FRAME_SIZE_FOLLOWERS:
        *parents, leaf = key.split(".")
        node: Any = out
        for name in parents:
            if not isinstance(node, dict):
                break
            node = node.setdefault(name, {})
        if isinstance(node, dict) and node.get(leaf) is None:
            node[leaf] = size
    return out


def without_removed_keys(tree: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a config tree without the keys of :data:`REMOVED_KEYS` (for configs saved before
    they were removed, e.g. with a registered model)."""
    out = copy.deepcopy(dict(tree))
    for key in REMOVED_KEYS:
        *parents, leaf = key.split(".")
        node: Any = out
        for name in parents:
            node = node.get(name) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return out


# ---------------------------------------------------------------------------------------------
# The ``loop`` section: how the paper's epochs are unrolled into pipeline iterations
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoopConfig:
    """Pipeline settings, not paper hyperparameters (docs/pipeline.md).

    ``iterations`` / ``evaluations`` map each iteration (``'1'``, ``'2'``, ...) to its predecessor
    (``{'prev': '0'}``); ``dvc.yaml`` generates the stages from them. They follow from
    ``common.epochs``, ``epochs_per_iteration`` and the evaluation cadence: ``params.yaml`` stores
    them because DVC reads them, and a stale copy is an error naming the fix.
    """

    epochs_per_iteration: int = 1
    checkpoint_every_seconds: float = 300.0  # mid-stage checkpoints of training stages
    log_every_steps: int = 10  # training metrics: logged (and checked for NaN) every this many steps
    # Promotion gate: the challenger replaces the champion when the bootstrap confidence interval
    # (at this level) of their mean paired return difference lies above zero.
    promotion_confidence: float = 0.95
    iterations: Mapping[str, Mapping[str, str]] = dataclasses.field(default_factory=dict)
    evaluations: Mapping[str, Mapping[str, str]] = dataclasses.field(default_factory=dict)

    @property
    def schedule_keys(self) -> list[int]:
        return sorted(int(k) for k in self.iterations)


LOOP_SETTINGS = (
    "epochs_per_iteration",
    "checkpoint_every_seconds",
    "log_every_steps",
    "promotion_confidence",
)


def _chain(iterations: Sequence[int]) -> dict[str, dict[str, str]]:
    return {str(i): {"prev": str(i - 1)} for i in iterations}


def _evaluation_chain(iterations: Sequence[int]) -> dict[str, dict[str, str]]:
    """Like :func:`_chain`, and ``after``: the file of the promotion before (the first evaluation:
    init's actor-critic), a dependency of ``promote@i`` so that promotions run in order."""
    chain = _chain(iterations)
    previous = "state/actor_critic/0.pt"
    for key, entry in chain.items():
        entry["after"] = previous
        previous = f"promotion/{key}.json"
    return chain


def derive_loop(config: IrisConfig, loop: Mapping[str, Any] | None) -> LoopConfig:
    """Check the ``loop`` section of a merged tree and fill in its iterations and evaluations."""
    from iris_core.training.schedule import Schedule

    data = dict(loop or {})
    for key in data:
        if key not in (*LOOP_SETTINGS, "iterations", "evaluations"):
            raise _unknown_key_error(LoopConfig, str(key), "loop")
    settings: dict[str, Any] = {}
    hints = typing.get_type_hints(LoopConfig)
    for key in LOOP_SETTINGS:
        if key in data and data[key] is not None:
            settings[key] = _convert(data[key], hints[key], f"loop.{key}")
    settings.setdefault("epochs_per_iteration", 1)
    if settings["epochs_per_iteration"] < 1:
        raise ConfigError("loop.epochs_per_iteration", "must be >= 1")
    if settings.get("checkpoint_every_seconds", 0.0) < 0:
        raise ConfigError("loop.checkpoint_every_seconds", "must be >= 0")
    if settings.get("log_every_steps", 1) < 1:
        raise ConfigError("loop.log_every_steps", "must be >= 1")
    if not 0.0 < settings.get("promotion_confidence", 0.95) < 1.0:
        raise ConfigError("loop.promotion_confidence", "must be in (0, 1)")
    schedule = Schedule(config, settings["epochs_per_iteration"])
    expected = {
        "iterations": _chain(range(1, schedule.num_iterations + 1)),
        "evaluations": _evaluation_chain(schedule.evaluated_iterations()),
    }
    for key, value in expected.items():
        given = data.get(key)
        if given is None:
            continue
        normalised = (
            {str(k): {str(a): str(b) for a, b in dict(v or {}).items()} for k, v in dict(given).items()}
            if isinstance(given, Mapping)
            else given
        )
        if normalised != value:
            raise ConfigError(
                f"loop.{key}",
                f"does not match common.epochs={config.common.epochs}, "
                f"loop.epochs_per_iteration={settings['epochs_per_iteration']} and "
                f"evaluation.every={config.evaluation.every} (expected {len(value)} entries "
                f"{list(value)[:3]}...); regenerate it with `iris config write -f params.yaml`",
            )
    return LoopConfig(**settings, iterations=expected["iterations"], evaluations=expected["evaluations"])


@dataclass(frozen=True)
class Experiment:
    """A workspace's experiment: the paper's config and the pipeline's loop settings."""

    config: IrisConfig
    loop: LoopConfig


def load_experiment(
    env: str | None = None,
    params: str | None = None,
    overrides: Sequence[str] = (),
    params_file: str | Path | None = None,
    root: Path | None = None,
) -> Experiment:
    """Like :func:`load_config`, with the ``loop`` section checked and completed."""
    tree = merged_config(env=env, params=params, overrides=overrides, params_file=params_file, root=root)
    loop = tree.pop("loop", None)
    if loop is not None and not isinstance(loop, Mapping):
        raise ConfigError("loop", f"expected a mapping of keys, got {_describe(loop)}")
    config = build_dataclass(IrisConfig, follow_frame_size(tree))
    assert isinstance(config, IrisConfig)
    return Experiment(config, derive_loop(config, loop))


def load_config(
    env: str | None = None,
    params: str | None = None,
    overrides: Sequence[str] = (),
    params_file: str | Path | None = None,
    root: Path | None = None,
) -> IrisConfig:
    """Merge presets (or a ``params.yaml``) with overrides and return the frozen, checked config."""
    return load_experiment(env, params, overrides, params_file, root).config


def to_yaml(tree: Mapping[str, Any] | IrisConfig) -> str:
    """Plain YAML (no interpolation) of a merged tree or a resolved config."""
    data = config_to_dict(tree) if isinstance(tree, IrisConfig) else dict(tree)
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=110)


def params_text(
    env: str | None = None,
    params: str | None = None,
    overrides: Sequence[str] = (),
    params_file: str | Path | None = None,
) -> tuple[str, Experiment]:
    """The text of a ``params.yaml`` for these presets/file and overrides, after checking it.

    Derived sizes are written as ``null`` (they follow their sources); the ``loop`` section's
    iterations and evaluations are regenerated, so a changed ``common.epochs`` adds stages.
    """
    tree = merged_config(env=env, params=params, overrides=overrides, params_file=params_file)
    loop_tree = tree.pop("loop", None)
    config = build_dataclass(IrisConfig, follow_frame_size(tree))
    assert isinstance(config, IrisConfig)
    if loop_tree is not None and not isinstance(loop_tree, Mapping):
        raise ConfigError("loop", f"expected a mapping of keys, got {_describe(loop_tree)}")
    if isinstance(loop_tree, Mapping):
        loop_tree = {k: v for k, v in loop_tree.items() if k not in ("iterations", "evaluations")}
    loop = derive_loop(config, loop_tree)
    # Newest iteration first: `dvc.yaml` generates its stages in this order, and DVC's check of the
    # stage graph for cycles (run by every `dvc repro`) then walks the graph about once; oldest first,
    # it walks it once per stage (6,000 stages: 64 CPU-s against 12 for every `dvc repro`).
    tree["loop"] = {
        **{key: getattr(loop, key) for key in LOOP_SETTINGS},
        "iterations": dict(reversed(list(loop.iterations.items()))),
        "evaluations": dict(reversed(list(loop.evaluations.items()))),
    }
    header = (
        "# The experiment of this workspace: plain values, read by every DVC stage.\n"
        "# null = derived from other values (see iris_core/config.py). Regenerate with `iris config write`.\n"
        "# loop.iterations lists the newest iteration first (DVC checks the stage graph faster that way).\n"
    )
    return header + to_yaml(tree), Experiment(config, loop)


def write_params(
    path: str | Path,
    env: str | None = None,
    params: str | None = None,
    overrides: Sequence[str] = (),
    params_file: str | Path | None = None,
) -> IrisConfig:
    """Write :func:`params_text` to ``path`` (atomically, only once it is known to be valid);
    ``load_config(params_file=path)`` gives back the same config."""
    text, experiment = params_text(env, params, overrides, params_file)
    atomic_write_text(Path(path), text)
    return experiment.config
