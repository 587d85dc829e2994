"""The synth YAML config: one file is the single source of truth for a synthetic data set.

Sections (see ``anomseg/configs/synth_default.yaml`` for a commented example)::

    seed: 0
    backgrounds: {source: cityscapes, options: {root: ..., split: train}}
    objects:     {source: coco, options: {annotations: ..., images: ..., categories: [...]}}
    split:       {synthetic: 0.8, clean: 0.2}
    instances:   {min: 1, max: 3}
    placement:   {...PlacementConfig fields: classes, coverage, geometry, probabilities...}
    blending:    {feather: 2.0, photometric_prob: 0.5, rim: ignore}
    labels:      {normal: 0, anomaly: 1, ignore: 255}
    export:      {out: synth_out, image_format: png, jpg_quality: 95}

Every invalid value raises InputError naming its key path (``placement.min_coverage``) and the
allowed values. Relative input paths (source options named ``root``, ``annotations``, ``images``
or ending in ``_dir`` / ``_path`` / ``_file``) are resolved against the config's folder; a relative
``export.out`` against the current folder, like any command's output, so that running a config
shipped inside the package never writes into the package.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from anomseg.errors import InputError
from anomseg.synth.placement import PlacementConfig
from anomseg.synth.records import short_repr
from anomseg.synth.render import RIM_RULES

TOP_KEYS = (
    "seed", "backgrounds", "objects", "split", "instances", "placement", "blending", "labels",
    "export",
)  # fmt: skip
PATH_KEYS = ("root", "annotations", "images")
IMAGE_FORMATS = ("png", "jpg")
MAX_INSTANCES = 1000


def _fail(path: str, expected: str, got: Any) -> InputError:
    return InputError(f"{path}: expected {expected}, got {short_repr(got)}")


def _section(data: Any, path: str, allowed: tuple[str, ...]) -> dict[str, Any]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise _fail(path, f"a mapping with keys {', '.join(allowed)}", data)
    for key in data:
        if key not in allowed:
            where = f"{path}.{key}" if path else str(key)
            raise InputError(f"{where}: unknown key; expected one of: {', '.join(allowed)}")
    return data


def _int(value: Any, path: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise _fail(path, f"an integer in [{lo}, {hi}]", value)
    return value


def _float(value: Any, path: str, lo: float, hi: float) -> float:
    ok = not isinstance(value, bool) and isinstance(value, int | float)
    if not ok or not lo <= value <= hi or not math.isfinite(value):
        raise _fail(path, f"a number in [{lo}, {hi}]", value)
    return float(value)


def _choice(value: Any, path: str, options: tuple[str, ...]) -> str:
    if value not in options:
        raise _fail(path, f"one of {', '.join(options)}", value)
    return value


@dataclass(frozen=True)
class SourceSpec:
    """A registry name plus the keyword options its builder takes."""

    source: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ExportConfig:
    """Where and how samples are written."""

    out: Path
    image_format: str = "png"
    jpg_quality: int = 95


@dataclass(frozen=True)
class SynthConfig:
    """A validated synth config (build it with ``load_config`` / ``parse_config``)."""

    seed: int
    backgrounds: SourceSpec
    objects: SourceSpec
    synthetic_ratio: float
    instances: tuple[int, int]
    placement: PlacementConfig
    rim: str
    labels: tuple[int, int, int]
    export: ExportConfig
    base_dir: Path

    def to_dict(self) -> dict[str, Any]:
        """A plain, JSON-able dict of the effective settings (paths as strings)."""
        return json.loads(
            json.dumps(
                {
                    "seed": self.seed,
                    "backgrounds": asdict(self.backgrounds),
                    "objects": asdict(self.objects),
                    "synthetic_ratio": self.synthetic_ratio,
                    "instances": list(self.instances),
                    "placement": asdict(self.placement),
                    "rim": self.rim,
                    "labels": list(self.labels),
                    "export": asdict(self.export),
                },
                default=str,
                sort_keys=True,
            )
        )

    def render_key(self) -> str:
        """Hash of the settings that change pixels for given records (rim, labels, format)."""
        blob = json.dumps(
            {
                "rim": self.rim,
                "labels": list(self.labels),
                "format": self.export.image_format,
                "q": self.export.jpg_quality,
                "bg": asdict(self.backgrounds),
            },
            sort_keys=True,
            default=str,
        )
        return hashlib.sha256(blob.encode()).hexdigest()


def _is_path_key(key: str) -> bool:
    return key in PATH_KEYS or key.endswith(("_dir", "_path", "_file"))


def _resolve_path(value: str, base_dir: Path) -> str:
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else (base_dir / p))


def _source(data: Any, path: str, registry, base_dir: Path) -> SourceSpec:
    sec = _section(data, path, ("source", "options"))
    name = sec.get("source")
    if not isinstance(name, str) or name not in registry:
        raise _fail(f"{path}.source", f"one of {', '.join(registry.names()) or '(none)'}", name)
    opts = sec.get("options") or {}
    if not isinstance(opts, dict):
        raise _fail(f"{path}.options", "a mapping of builder options", opts)
    builder = registry.get(name)
    params = inspect.signature(builder).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        allowed = [k for k, p in params.items() if p.kind is not inspect.Parameter.VAR_POSITIONAL]
        for key in opts:
            if key not in allowed:
                raise InputError(
                    f"{path}.options.{key}: unknown option for {path} source {name!r}; expected "
                    f"one of: {', '.join(allowed)}"
                )
        missing = [
            k
            for k, p in params.items()
            if p.default is inspect.Parameter.empty
            and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
            and k not in opts
        ]
        if missing:
            raise InputError(f"{path}.options.{missing[0]}: required by {path} source {name!r}")
    resolved = {}
    for key, value in opts.items():
        # a source may declare its path options (a labelled source's 'images' is a folder name
        # under its root, not a path); otherwise the naming rule decides
        declared = getattr(builder, "PATH_OPTIONS", None)
        is_path = str(key) in declared if declared is not None else _is_path_key(str(key))
        if is_path and isinstance(value, str):
            value = _resolve_path(value, base_dir)
        elif is_path and isinstance(value, list) and all(isinstance(v, str) for v in value):
            value = [_resolve_path(v, base_dir) for v in value]  # several COCO files
        resolved[str(key)] = value
    return SourceSpec(name, resolved)


def ensure_sources_registered() -> None:
    """Import the modules that register the built-in object / background sources."""
    import importlib

    import anomseg.synth.cityscapes  # noqa: F401
    import anomseg.synth.coco  # noqa: F401
    import anomseg.synth.folder  # noqa: F401
    import anomseg.synth.labelled  # noqa: F401

    try:  # the built-in procedural world registers "procedural" / "bank" when imported
        importlib.import_module("anomseg.world")
    except ImportError:
        pass


def parse_config(data: Any, base_dir: str | Path = ".") -> SynthConfig:
    """Validate a decoded YAML document; every error names its key path."""
    from anomseg.synth.sources import BACKGROUND_SOURCES, OBJECT_SOURCES

    ensure_sources_registered()
    base = Path(base_dir).resolve()
    top = _section(data, "", TOP_KEYS)
    if not top:
        raise InputError("config: expected a mapping with keys " + ", ".join(TOP_KEYS))
    seed = _int(top.get("seed", 0), "seed", 0, 2**63 - 1)
    for required in ("backgrounds", "objects"):
        if required not in top:
            raise InputError(f"{required}: missing section (needs 'source' and 'options')")
    backgrounds = _source(top["backgrounds"], "backgrounds", BACKGROUND_SOURCES, base)
    objects = _source(top["objects"], "objects", OBJECT_SOURCES, base)

    split = _section(top.get("split"), "split", ("synthetic", "clean"))
    if "synthetic" in split:
        synthetic = _float(split["synthetic"], "split.synthetic", 0.0, 1.0)
        if "clean" in split:
            clean = _float(split["clean"], "split.clean", 0.0, 1.0)
            if abs(synthetic + clean - 1.0) > 1e-9:
                raise _fail("split.clean", f"1 - split.synthetic = {1 - synthetic:g}", clean)
    elif "clean" in split:
        synthetic = 1.0 - _float(split["clean"], "split.clean", 0.0, 1.0)
    else:
        synthetic = 1.0

    inst = _section(top.get("instances"), "instances", ("min", "max"))
    lo = _int(inst.get("min", 1), "instances.min", 0, MAX_INSTANCES)
    hi = _int(inst.get("max", max(lo, 3)), "instances.max", lo, MAX_INSTANCES)

    blend = _section(top.get("blending"), "blending", ("feather", "photometric_prob", "rim"))
    feather = _float(blend.get("feather", 2.0), "blending.feather", 0.0, 64.0)
    photometric = _float(blend.get("photometric_prob", 0.5), "blending.photometric_prob", 0.0, 1.0)
    rim = _choice(blend.get("rim", "ignore"), "blending.rim", RIM_RULES)

    pl = _section(top.get("placement"), "placement", tuple(PlacementConfig.__dataclass_fields__))
    for key in ("feather", "photometric_prob"):
        if key in pl:
            raise InputError(f"placement.{key}: set it under blending.{key}")
    pl = dict(pl)
    for key in ("area_ratio", "rotation_range"):
        if isinstance(pl.get(key), list):
            pl[key] = tuple(pl[key])
    if isinstance(pl.get("forbidden_classes"), list):
        pl["forbidden_classes"] = tuple(pl["forbidden_classes"])
    placement = PlacementConfig.from_dict(
        {**pl, "feather": feather, "photometric_prob": photometric}
    )

    lab = _section(top.get("labels"), "labels", ("normal", "anomaly", "ignore"))
    labels = (
        _int(lab.get("normal", 0), "labels.normal", 0, 255),
        _int(lab.get("anomaly", 1), "labels.anomaly", 0, 255),
        _int(lab.get("ignore", 255), "labels.ignore", 0, 255),
    )
    if len(set(labels)) != 3:
        raise _fail("labels", "three distinct values for normal, anomaly, ignore", labels)

    exp = _section(top.get("export"), "export", ("out", "image_format", "jpg_quality"))
    out = exp.get("out", "synth_out")
    if not isinstance(out, str) or not out:
        raise _fail("export.out", "a folder path", out)
    out_path = Path(out).expanduser()
    export = ExportConfig(
        out=out_path if out_path.is_absolute() else Path.cwd() / out_path,
        image_format=_choice(exp.get("image_format", "png"), "export.image_format", IMAGE_FORMATS),
        jpg_quality=_int(exp.get("jpg_quality", 95), "export.jpg_quality", 1, 100),
    )
    return SynthConfig(
        seed=seed,
        backgrounds=backgrounds,
        objects=objects,
        synthetic_ratio=synthetic,
        instances=(lo, hi),
        placement=placement,
        rim=rim,
        labels=labels,
        export=export,
        base_dir=base,
    )


def load_config(path: str | Path) -> SynthConfig:
    """Read and validate a synth YAML file (relative paths resolve against its folder)."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read config file {path}: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InputError(f"config file {path} is not valid YAML: {exc}") from None
    return parse_config(data, path.parent)


def build_sources(cfg: SynthConfig):
    """Instantiate (background source, object source) from the config's registry names."""
    from anomseg.synth.sources import BACKGROUND_SOURCES, OBJECT_SOURCES

    ensure_sources_registered()
    built = []
    for path, spec, registry in (
        ("backgrounds", cfg.backgrounds, BACKGROUND_SOURCES),
        ("objects", cfg.objects, OBJECT_SOURCES),
    ):
        try:
            built.append(registry.get(spec.source)(**spec.options))
        except InputError as exc:
            raise InputError(f"{path} ({spec.source}): {exc}") from None
    return built[0], built[1]
