"""Post-hoc anomaly scorers: pure functions ``Prediction -> float32 (H, W)``, higher = more anomalous.

Every scorer is a ``ScorerSpec`` in the ``SCORERS`` registry, which also describes its parameters
(name, default, range) and the ``Prediction`` fields it needs, so the CLI and the app list them
without knowing any scorer. Adding a method is one function plus one ``_register`` call.

What ``logits`` are (see ``anomseg.prediction``): for a pixel model (ERFNet) the raw outputs of all
its channels (20 = 19 classes + void, as the seed scored them); for a mask model (EoMT) the
per-pixel class scores ``einsum(sigmoid(mask_logits), softmax(class_logits)[..., :-1])``. The
softmax-based scorers (msp, entropy) and the logit-based ones (maxlogit, energy) read ``logits``
as they are, for both kinds of model, as the seed did. RbA (mask models only) reads the same class
scores, as the original RbA and the seed's notebook do.

A scorer whose definition changes gets a higher ``revision``: results are stored with the
revision they were computed under and the leaderboard hides those of an older one (RbA is at 2:
revision 1 read the separately aggregated raw class logits instead of the class scores).

The four uncertainty statistics (``stat_*``, ``uncertainty_stats``) follow the seed report §3.4.1:
they are read off "the dense semantic map M, which fuses mask probabilities with class
distributions", i.e. for a mask model the class scores *themselves* are the probabilities (no
softmax: their sum is not 1 and is exactly the "sum of class probabilities" statistic); for a
pixel model the probabilities are ``softmax(logits)`` (sum 1). ``class_probabilities`` is that
rule. Entropy there is ``-sum p log p`` (not normalised), as in the report.

Dynamic scorers: learned heads arrive later as ``head:<version>``. A *family* is a name prefix
with a resolver ``suffix -> ScorerSpec`` (and optionally a lister of the names it has now),
registered with ``register_family("head", resolve, names)``; ``get_scorer``, ``score`` and
``list_scorers`` consult families after the static registry. ``score(..., extra={name: spec})``
adds one-off scorers for a single call.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from anomseg.errors import InputError
from anomseg.prediction import Prediction
from anomseg.registry import Registry

PREDICTION_FIELDS = ("logits", "pixel_class_logits", "mask_logits", "class_logits", "features")


@dataclass(frozen=True)
class Param:
    """A numeric scorer parameter; ``min``/``max`` are inclusive bounds."""

    name: str
    default: float
    min: float
    max: float
    step: float = 0.01
    help: str = ""

    def check(self, value: Any, scorer: str) -> float:
        """The value cast to the default's type, or InputError naming the allowed range."""
        try:
            v = type(self.default)(value)
        except (TypeError, ValueError):
            raise InputError(
                f"{scorer}: parameter {self.name}={value!r} is not a number; "
                f"expected a value in [{self.min:g}, {self.max:g}]"
            ) from None
        if not (math.isfinite(v) and self.min <= v <= self.max):
            raise InputError(
                f"{scorer}: parameter {self.name}={value!r} is out of range; "
                f"expected a value in [{self.min:g}, {self.max:g}]"
            )
        return v


@dataclass(frozen=True)
class ScorerSpec:
    """A scorer and what the CLI / app need to know about it."""

    name: str
    fn: Callable[..., np.ndarray]
    params: tuple[Param, ...] = ()
    label: str = ""
    needs: frozenset[str] = frozenset({"logits"})
    description: str = ""
    # True for a statistic where HIGH means normal (stat_max_prob): metrics rank it the wrong way
    inverted: bool = False
    meta: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=False)
    # defined on a mask model's class scores only (RbA): not applicable to a pixel model
    mask_only: bool = False
    # bumped when the definition changes, so stored results of an older one are never shown
    revision: int = 1

    def param(self, name: str) -> Param:
        """The parameter called ``name`` or InputError listing the known ones."""
        for p in self.params:
            if p.name == name:
                return p
        known = ", ".join(p.name for p in self.params) or "none"
        raise InputError(f"{self.name}: unknown parameter {name!r}; known parameters: {known}")

    def resolve_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Validated params with defaults filled in."""
        out = {p.name: p.default for p in self.params}
        for k, v in params.items():
            out[k] = self.param(k).check(v, self.name)
        return out

    def applicable(self, prediction: Prediction) -> bool:
        """Whether the prediction holds every field this scorer reads (and is a mask model's)."""
        if self.mask_only and not is_mask_model(prediction):
            return False
        return all(getattr(prediction, f, None) is not None for f in self.needs)


@dataclass(frozen=True)
class ScorerFamily:
    """Scorers named ``<prefix>:<suffix>`` supplied at run time (e.g. ``head:v3``)."""

    prefix: str
    resolve: Callable[[str], ScorerSpec]
    names: Callable[[], list[str]] | None = None  # the suffixes available now, e.g. ["v1"]


SCORERS: Registry[ScorerSpec] = Registry("scorer")
FAMILIES: Registry[ScorerFamily] = Registry("scorer family")


def _register(spec: ScorerSpec) -> ScorerSpec:
    SCORERS.register(spec.name, spec)
    return spec


def register_family(
    prefix: str,
    resolve: Callable[[str], ScorerSpec],
    names: Callable[[], list[str]] | None = None,
) -> ScorerFamily:
    """Register a family of dynamic scorers ``prefix:<suffix>`` (e.g. learned heads)."""
    fam = ScorerFamily(prefix, resolve, names)
    FAMILIES.register(prefix, fam)
    return fam


# ----------------------------------------------------------------------------- tensor math


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t.detach().float()


def _out(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).numpy()


def is_mask_model(prediction: Prediction) -> bool:
    """A mask model's prediction carries per-pixel class logits aggregated over queries."""
    return prediction.pixel_class_logits is not None or prediction.class_logits is not None


def _probabilities(z: torch.Tensor, mask_model: bool) -> torch.Tensor:
    # a mask model's class scores are already sigmoid x softmax products (>= 0)
    return z.clamp_min(0.0) if mask_model else torch.softmax(z, dim=0)


def class_probabilities(prediction: Prediction) -> torch.Tensor:
    """(C, H, W) probabilities the statistics read: class scores (mask) or softmax (pixel)."""
    return _probabilities(_f32(prediction.logits), is_mask_model(prediction))


# Logits are reduced over channels in blocks of rows of about this many bytes: a 20 x 512 x 1024
# map is 40 MB, and whole-map temporaries (z - lse, exp, products) cost more in memory traffic and
# page faults than the arithmetic; 1 MiB blocks stay in cache (entropy 3-4x faster on CPU).
ROW_BLOCK_BYTES = 1 << 20


def by_rows(fn: Callable[..., torch.Tensor], z: torch.Tensor, *maps: torch.Tensor) -> torch.Tensor:
    """``fn`` (a per-pixel reduction over dim 0 of a (C, H, W) tensor) applied block-wise.

    Blocks are runs of the flattened pixels that start at multiples of 256, so every pixel lands
    on the same lane of the same vectorised kernel as in the whole map: equal to ``fn(z)`` bit
    for bit when the width is a multiple of 16 (tested at 1024 and 1280), else within an ulp
    for the few pixels torch's own split points put in a scalar tail. Only the temporaries are
    smaller. ``maps`` are (H, W) tensors cut into the same blocks and passed to
    ``fn`` after the logits. GPU tensors are reduced in one go.
    """
    C, H, W = z.shape
    n = H * W
    block = max(256, ROW_BLOCK_BYTES // max(1, C * z.element_size()) // 256 * 256)
    if block >= n or z.device.type != "cpu":
        return fn(z, *maps)
    flat = z.reshape(C, 1, n)
    flat_maps = [m.reshape(1, n) for m in maps]

    def part(a: int) -> torch.Tensor:
        return fn(flat[..., a : a + block], *(m[..., a : a + block] for m in flat_maps))

    first = part(0)
    out = first.new_empty((*first.shape[:-1], n))  # (1, n), or (K, 1, n) for several maps
    out[..., :block] = first
    for a in range(block, n, block):
        out[..., a : a + block] = part(a)
    return out.reshape(*first.shape[:-2], H, W)


def msp_t(logits: torch.Tensor, T: float = 1.0) -> torch.Tensor:
    """1 - max softmax(logits / T) over channels (dim 0)."""
    return by_rows(lambda z: 1.0 - torch.softmax(z / T, dim=0).amax(0), _f32(logits))


def rba_t(class_scores: torch.Tensor) -> torch.Tensor:
    """RbA: -sum_k tanh(s_k) over the per-pixel class scores s (dim 0)."""
    return by_rows(lambda s: -torch.tanh(s).sum(0), _f32(class_scores))


def _stats_block(z: torch.Tensor, mask_model: bool) -> torch.Tensor:
    p = _probabilities(z, mask_model)
    pmax = p.amax(0)
    ent = -torch.special.xlogy(p, p).sum(0)  # 0 log 0 = 0: class scores can be exactly 0
    return torch.stack([pmax, ent, p.sum(0), 1.0 - pmax])


def stats_of_scores(z: torch.Tensor, mask_model: bool) -> torch.Tensor:
    """(4, H, W) head statistics of a (C, H, W) score map (e.g. one EoMT window's class scores)."""
    return by_rows(lambda b: _stats_block(b, mask_model), _f32(z))


def uncertainty_stats(prediction: Prediction) -> torch.Tensor:
    """(4, H, W) float32 [max prob, entropy, sum of probs, 1 - max prob] for the anomaly heads."""
    mask_model = is_mask_model(prediction)
    z = _f32(prediction.logits)
    return _memo(prediction, ("stats",), lambda: by_rows(lambda b: _stats_block(b, mask_model), z))


# ----------------------------------------------------------------------------- registered scorers

_T_HELP = "softmax temperature: logits are divided by T"


def _param_t(help_: str = _T_HELP) -> Param:
    return Param("T", 1.0, 0.01, 100.0, 0.01, help_)


def _memo(prediction: Prediction, key: tuple, fn) -> torch.Tensor:
    """Per-prediction cache of channel reductions shared by several scorers.

    max_k z_k and logsumexp_k(z_k / T) are what msp, maxlogit, energy and entropy all start from;
    computing each once per prediction is what makes "every method from one forward" cheap
    (a pass over C x H x W costs more than the per-pixel arithmetic that follows). Pure: the
    cached values are functions of the prediction's own logits.
    """
    return prediction.memo(key, fn)


def _amax(prediction: Prediction) -> torch.Tensor:
    return _memo(prediction, ("amax",), lambda: _f32(prediction.logits).amax(0))


def _lse(prediction: Prediction, T: float) -> torch.Tensor:
    z = _f32(prediction.logits)
    return _memo(
        prediction,
        ("lse", float(T)),
        lambda: by_rows(lambda b: torch.logsumexp(b if T == 1 else b / T, 0), z),
    )


def msp(prediction: Prediction, T: float = 1.0) -> np.ndarray:
    """Maximum softmax probability (Hendrycks & Gimpel, 2017): 1 - max_k softmax(z / T)_k.

    Kept as a plain softmax (not ``exp(max - logsumexp)``): the two differ in the last float bit,
    which reorders near-ties and would make results drift from the textbook computation.
    """
    return _out(msp_t(prediction.logits, T))


def maxlogit(prediction: Prediction) -> np.ndarray:
    """Max logit (Hendrycks et al., 2022): -max_k z_k."""
    return _out(-_amax(prediction))


def entropy(prediction: Prediction) -> np.ndarray:
    """Max entropy: H(softmax(z)) / log C, as ``logsumexp(z) - sum_k softmax(z)_k z_k``."""
    z = _f32(prediction.logits)
    lse = _lse(prediction, 1.0)
    h = by_rows(lambda b, lb: lb - (torch.exp(b - lb) * b).sum(0), z, lse)
    return _out(h.clamp_min(0.0) / math.log(z.shape[0]))


def energy(prediction: Prediction, T: float = 1.0) -> np.ndarray:
    """Energy score (Liu et al., NeurIPS 2020): -T * logsumexp(z / T)."""
    return _out(-T * _lse(prediction, T))


def rba(prediction: Prediction) -> np.ndarray:
    """Rejected by All (RbA; Nayal et al., ICCV 2023): -sum_k tanh(s_k).

    ``s_k = sum_q sigmoid(m_q) * softmax(c_q)_k`` is the per-pixel score of class k (softmax over
    all classes including "no object", which is dropped after it), i.e. ``Prediction.logits`` of
    a mask model, as in the original RbA and the seed's notebook. Each class "accepts" a pixel
    when tanh(s_k) is near 1; a pixel that every class rejects scores high (0 at most).
    Mask models only.
    """
    return _out(rba_t(prediction.logits))


def stat_max_prob(prediction: Prediction) -> np.ndarray:
    """Max class probability (a statistic of the heads; INVERTED: high = normal)."""
    return _out(uncertainty_stats(prediction)[0])


def stat_entropy(prediction: Prediction) -> np.ndarray:
    """-sum_k p_k log p_k of the class probabilities (not normalised; the heads' statistic)."""
    return _out(uncertainty_stats(prediction)[1])


def stat_sum_prob(prediction: Prediction) -> np.ndarray:
    """Sum of class probabilities ("energy proxy"; 1 everywhere for a pixel model's softmax)."""
    return _out(uncertainty_stats(prediction)[2])


def stat_one_minus_max(prediction: Prediction) -> np.ndarray:
    """1 - max class probability (for a pixel model this is msp at T = 1)."""
    return _out(uncertainty_stats(prediction)[3])


_STATS_NOTE = "[p: softmax for pixel models, class scores for mask models]"

for _spec in (
    ScorerSpec(
        "msp",
        msp,
        (_param_t(),),
        "MSP",
        description="1 - max softmax(logits / T) (maximum softmax probability)",
    ),
    ScorerSpec("maxlogit", maxlogit, (), "MaxLogit", description="-max logit"),
    ScorerSpec(
        "entropy", entropy, (), "MaxEntropy", description="entropy of softmax(logits) / log C"
    ),
    ScorerSpec(
        "energy",
        energy,
        (_param_t("energy temperature"),),
        "Energy",
        description="-T * logsumexp(logits / T)",
    ),
    ScorerSpec(
        "rba",
        rba,
        (),
        "RbA",
        description="-sum_k tanh(class score_k); mask models only (Nayal et al., ICCV 2023)",
        mask_only=True,
        revision=2,
    ),
    ScorerSpec(
        "stat_max_prob",
        stat_max_prob,
        (),
        "Stat: max prob",
        description="max p; INVERTED (high = normal) " + _STATS_NOTE,
        inverted=True,
    ),
    ScorerSpec(
        "stat_entropy",
        stat_entropy,
        (),
        "Stat: entropy",
        description="-sum p log p " + _STATS_NOTE,
    ),
    ScorerSpec(
        "stat_sum_prob",
        stat_sum_prob,
        (),
        "Stat: sum of probs",
        description="sum of p (1 for pixel models) " + _STATS_NOTE,
    ),
    ScorerSpec(
        "stat_one_minus_max",
        stat_one_minus_max,
        (),
        "Stat: 1 - max prob",
        description="1 - max p " + _STATS_NOTE,
    ),
):
    _register(_spec)


# ----------------------------------------------------------------------------- public helpers


def get_scorer(name: str, extra: Mapping[str, ScorerSpec] | None = None) -> ScorerSpec:
    """The spec of a scorer: ``extra``, then the registry, then a family (``head:v3``)."""
    if extra and name in extra:
        return extra[name]
    if name in SCORERS:
        return SCORERS.get(name)
    prefix, sep, suffix = name.partition(":")
    if sep and prefix in FAMILIES:
        return FAMILIES.get(prefix).resolve(suffix)
    known = SCORERS.names() + [f"{p}:<name>" for p in FAMILIES.names()]
    raise InputError(f"unknown scoring method {name!r}; expected one of: {', '.join(known)}")


def list_scorers(
    prediction: Prediction | None = None, extra: Mapping[str, ScorerSpec] | None = None
) -> list[ScorerSpec]:
    """All scorers (static, family-listed, ``extra``), only those applicable to ``prediction``."""
    specs = [SCORERS.get(n) for n in SCORERS.names()]
    for fam in (FAMILIES.get(p) for p in FAMILIES.names()):
        if fam.names is not None:
            specs.extend(fam.resolve(suffix) for suffix in fam.names())
    specs.extend((extra or {}).values())
    if prediction is not None:
        specs = [s for s in specs if s.applicable(prediction)]
    return specs


def score(
    name: str,
    prediction: Prediction,
    extra: Mapping[str, ScorerSpec] | None = None,
    **params: Any,
) -> np.ndarray:
    """Run one scorer with validated parameters: float32 (H, W), higher = more anomalous."""
    spec = get_scorer(name, extra)
    full = spec.resolve_params(params)
    if spec.mask_only and not is_mask_model(prediction):
        raise InputError(
            f"{name} applies to mask models only (EoMT); model "
            f"{prediction.model_name or '(unnamed)'} is a pixel model"
        )
    missing = [f for f in sorted(spec.needs) if getattr(prediction, f, None) is None]
    if missing:
        raise InputError(
            f"{name} needs the prediction field(s) {', '.join(missing)}, which model "
            f"{prediction.model_name or '(unnamed)'} does not produce"
        )
    out = spec.fn(prediction, **full)
    if isinstance(out, torch.Tensor):
        out = _out(out)
    out = np.asarray(out, dtype=np.float32)
    if out.shape != prediction.size:
        raise InputError(
            f"scorer {name} returned shape {out.shape}; expected the scoring size {prediction.size}"
        )
    return out


def scorer_revision(method: str) -> int:
    """The current definition revision of a method string's scorer (1 for unknown ones)."""
    name = method.split(":", 1)[0]  # "msp:T=2.0" -> msp; families (head:3) have revision 1
    return SCORERS.get(name).revision if name in SCORERS else 1


def parse_method(
    spec: str, extra: Mapping[str, ScorerSpec] | None = None
) -> tuple[str, dict[str, float]]:
    """``"msp:T=2.0"`` -> ("msp", {"T": 2.0}); ``"head:v3"`` -> ("head:v3", {}).

    Grammar: ``name[:part]*``; a part holding ``=`` is a parameter ``key=number``, any other part
    belongs to the name (family scorers such as ``head:v3``). Names are checked, values are not
    (``score`` validates ranges).
    """
    text = spec.strip()
    if not text:
        raise InputError("empty method; expected e.g. msp, msp:T=2.0 or energy:T=0.5")
    name_parts: list[str] = []
    params: dict[str, float] = {}
    for part in text.split(":"):
        part = part.strip()
        if "=" in part:
            key, _, value = part.partition("=")
            key, value = key.strip(), value.strip()
            if not key or not value:
                raise InputError(
                    f"method {spec!r}: malformed parameter {part!r}; expected key=value"
                )
            try:
                params[key] = float(value)
            except ValueError:
                raise InputError(
                    f"method {spec!r}: parameter {key}={value!r} is not a number"
                ) from None
        elif params:
            raise InputError(f"method {spec!r}: {part!r} after parameters; expected key=value")
        elif part:
            name_parts.append(part)
        else:
            raise InputError(f"method {spec!r}: empty part; expected name[:key=value]")
    if not name_parts:
        raise InputError(f"method {spec!r} has no name; expected e.g. msp:T=2.0")
    name = ":".join(name_parts)
    spec_obj = get_scorer(name, extra)
    for key in params:
        spec_obj.param(key)  # unknown parameter -> InputError now, not mid-evaluation
    return name, params


def format_method(name: str, params: Mapping[str, Any] | None = None) -> str:
    """Canonical method string (parameters sorted, defaults dropped): inverse of parse_method."""
    params = dict(params or {})
    try:
        spec = get_scorer(name)
    except InputError:
        spec = None  # a family scorer that is gone: keep what was stored
    if spec is not None:
        params = {k: v for k, v in params.items() if spec.param(k).default != float(v)}
    return name + "".join(f":{k}={float(v)!r}" for k, v in sorted(params.items()))
