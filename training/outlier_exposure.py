"""Outlier-exposure training (Meta-OoD, Chan et al. 2021): fine-tune the model's last layers.

Loss (no semantic labels needed): on pasted pixels (label 1) cross-entropy of the tuned posterior
to the uniform distribution over the C outputs, ``-1/C sum_k log p_k``; on normal pixels (label 0)
KL from the *frozen* model's own posterior, ``sum_k q_k (log q_k - log p_k)``, so the model keeps
what it predicted everywhere else; label 255 (paste rims) is ignored. ``oe_loss`` =
``oe_weight * mean_pasted(CE) + mean_normal(KL)``.

Optional energy-margin term (``energy_weight`` > 0; the energy-bounded fine-tuning of Liu et al.,
NeurIPS 2020, with the frozen model as the in-distribution margin): with ``L = logsumexp`` of the
tuned logits over the scored classes (the energy score is ``-L``), ``energy_weight * (
mean_pasted(relu(L - energy_margin)^2) + mean_normal(relu(L_frozen - L)^2))``. Pasted pixels are
pushed below the margin; normal pixels may not drop below the frozen model's own ``L``. The
softmax terms above cannot do this, since a posterior is blind to a shift of all logits: they
flatten pastes but leave their energy where it was, and energy is the best post-hoc readout of
the shared ERFNet on RoadAnomaly21 (README "Real data").

The encoder stays frozen, so its output is computed once per image (the feature cache of
``training.features``, the same entries the feature head reads) and training re-runs only the
decoder, on random crops of the feature grid (``crop`` at the model's input size) centred on
pasted pixels most of the time: most of an image is normal road and sky that the KL term only has
to keep. Frozen targets come from an untouched copy of the same layers, on the same crop.

``train_oe`` is the pure core; ``train_oe_version`` the store-facing run that versions the result
as a head of kind ``"oe"`` (checkpoint, HeadVersion, evaluation rows, activation), like
``training.trainer.train_head`` (which hands ``head="oe"`` requests over to it).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from anomseg.errors import InputError
from anomseg.labels import ANOMALY as PASTED  # a pasted object is an anomaly
from anomseg.labels import NORMAL
from anomseg.models.outlier_exposure import ERFNET_STAGES, OE_SCORES, OEHead
from training.fit import Cancelled
from training.frozen import FrozenModel
from training.versions import ACTIVATION_RULES, eval_datasets, evaluate_and_record, safe_name

Progress = Callable[[float, str], None]


@dataclass
class OEConfig:
    """Hyper-parameters of one outlier-exposure fine-tuning (recorded on the HeadVersion)."""

    # The defaults are the setting that beat Energy on RoadAnomaly21 over seeds and paste draws
    # (README "Real data"): the whole decoder, 128x256 crops, two epochs, the energy-margin term,
    # read by energy; training.real_recipe.OE_RECIPE records the same (a test keeps them equal).
    stage: str = "decoder"
    score: str = "energy"
    epochs: int = 2
    lr: float = 1e-4
    oe_weight: float = 1.0
    batch_size: int = 4
    crop: tuple[int, int] = (128, 256)  # at the model input size; multiples of 8
    paste_centred: float = 0.8  # share of crops centred on a pasted pixel
    energy_weight: float = 0.1  # 0 = Meta-OoD's loss alone
    # logsumexp pasted pixels are pushed below; the shared ERFNet's is ~8.1 (median) on normal
    # CamVid pixels, 5th percentile 4.6, and ~5.0 on large COCO pastes before tuning
    energy_margin: float = 3.0
    seed: int = 0
    cache_stride: int = 2
    threads: int | None = None

    def __post_init__(self) -> None:
        self.crop = (int(self.crop[0]), int(self.crop[1]))
        checks = {
            "stage": self.stage in ERFNET_STAGES,
            "score": self.score in OE_SCORES,
            "epochs": self.epochs >= 1,
            "lr": self.lr > 0,
            "oe_weight": self.oe_weight > 0,
            "batch_size": self.batch_size >= 1,
            "crop": all(c >= 8 and c % 8 == 0 for c in self.crop),
            "paste_centred": 0 <= self.paste_centred <= 1,
            "energy_weight": self.energy_weight >= 0,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise InputError(
                f"outlier-exposure option {bad[0]}={getattr(self, bad[0])!r} is out of range "
                f"(stage one of {list(ERFNET_STAGES)}, score one of {list(OE_SCORES)}, epochs "
                ">= 1, lr > 0, oe_weight > 0, batch_size >= 1, crop multiples of 8, "
                "0 <= paste_centred <= 1, energy_weight >= 0)"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (stored as the head version's hyper-parameters)."""
        d = asdict(self)
        d["crop"] = list(self.crop)
        return {"head": "oe", **d}

    @classmethod
    def from_train_config(cls, config: Any) -> OEConfig:
        """From a head ``TrainConfig`` (the Retrain tab / ``anomseg train --head oe``): epochs and
        seed carry over; the learning rate is a tenth of the head's, since these layers are
        pretrained and a from-scratch head's rate would wipe out what they know."""
        return cls(epochs=config.epochs, lr=config.lr / 10, seed=config.seed)


def oe_loss(
    logits: torch.Tensor,
    frozen_logits: torch.Tensor,
    target: torch.Tensor,
    oe_weight: float = 1.0,
    energy_weight: float = 0.0,
    energy_margin: float = 3.0,
    classes: int | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """(B, C, H, W) tuned and frozen logits, (B, H, W) labels 0/1/255 -> (loss, parts).

    ``oe_weight * mean over pasted pixels of CE(uniform, p) + mean over normal pixels of
    KL(q_frozen || p)``, plus ``energy_weight`` times the energy-margin term of the module
    docstring over the first ``classes`` channels (all when None); a term without pixels counts 0.
    """
    logp = F.log_softmax(logits.float(), dim=1)
    logq = F.log_softmax(frozen_logits.float(), dim=1)
    ce_uniform = -logp.mean(dim=1)
    kl = (logq.exp() * (logq - logp)).sum(dim=1)
    pasted, normal = target == PASTED, target == NORMAL
    zero = logits.sum() * 0.0
    ce = ce_uniform[pasted].mean() if bool(pasted.any()) else zero
    kd = kl[normal].mean() if bool(normal.any()) else zero
    loss = oe_weight * ce + kd
    parts = {"ce_uniform": float(ce.detach()), "kl": float(kd.detach()), "energy": 0.0}
    if energy_weight > 0:
        # over the scored classes only (ERFNet's channel 19, "void", is not scored)
        lse = torch.logsumexp(logits[:, :classes].float(), dim=1)
        lse_frozen = torch.logsumexp(frozen_logits[:, :classes].float(), dim=1)
        ep = (F.relu(lse[pasted] - energy_margin) ** 2).mean() if bool(pasted.any()) else zero
        en = (F.relu(lse_frozen[normal] - lse[normal]) ** 2).mean() if bool(normal.any()) else zero
        loss = loss + energy_weight * (ep + en)
        parts["energy"] = float((ep + en).detach())
    return loss, parts


@dataclass
class OESet:
    """Encoder outputs and labels of the training images, at the model input size."""

    features: torch.Tensor  # (N, 128, h, w) float16
    targets: torch.Tensor  # (N, H, W) uint8 0 / 1 / 255
    image_hashes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.features.shape[0])


def build_oe_set(
    images: Sequence[Any],
    cache: Any,
    model_key: str,
    size: tuple[int, int],
    predict: Callable[[np.ndarray], Any],
    progress: Progress | None = None,
) -> tuple[OESet, Any]:
    """``TrainImage``s with ground truth -> (OESet, Snapshot); encoder outputs come from the
    feature cache (computed by ``predict`` only when missing). Images of eval / heldout datasets
    are refused (``training.dataset.NO_TRAIN_ROLES``)."""
    from anomseg.imageio import resize_label
    from training.dataset import NO_TRAIN_ROLES, Snapshot

    snap = Snapshot()
    feats: list[torch.Tensor] = []
    targets: list[torch.Tensor] = []
    hashes: list[str] = []
    for n, item in enumerate(images):
        if progress is not None:
            progress(n / max(len(images), 1), f"encoder outputs {n}/{len(images)}")
        if item.role in NO_TRAIN_ROLES:
            snap.refused.append(item.key)
            continue
        if item.load_target is None:
            continue  # outlier exposure needs pasted pixels; flags alone do not say where
        target = np.asarray(item.load_target())
        entry = cache.get_or_compute(
            model_key, item.image_hash, size, lambda item=item: predict(item.load_rgb())
        )
        if entry.features is None or entry.features.shape[0] != 128:
            raise InputError(
                "outlier exposure re-runs ERFNet's decoder from its encoder output, but the "
                "model's predictions carry no 128-channel encoder features (ERFNet only)"
            )
        feats.append(entry.features.to(torch.float16))
        targets.append(torch.from_numpy(np.array(resize_label(target, size), dtype=np.uint8)))
        hashes.append(item.image_hash)
        snap.images.append({"key": item.key, "image_sha256": item.image_hash, **item.info})
    if not hashes:
        raise InputError(
            "no usable training samples for outlier exposure: accept some synthetic samples with "
            "pastes (images of eval/heldout datasets never train)"
        )
    t = torch.stack(targets)
    snap.counts = {
        "images": len(hashes),
        "refused": len(snap.refused),
        "positives": int((t == PASTED).sum()),
        "negatives": int((t == NORMAL).sum()),
        "flags": 0,
        "fp_flag_pixels": 0,
        "fn_flag_pixels": 0,
    }
    if snap.counts["positives"] == 0:
        raise InputError("no pasted pixels in the training samples; outlier exposure needs some")
    if progress is not None:
        progress(1.0, f"{len(hashes)} images")
    return OESet(torch.stack(feats), t, hashes), snap


def _split(head: OEHead) -> int:
    """Index of the first decoder layer with tuned parameters (6 = only the classifier)."""
    names = head.tuned_names()
    for i in range(len(head.decoder.layers)):
        if any(n.startswith(f"decoder.layers.{i}.") for n in names):
            return i
    return len(head.decoder.layers)


def _run(decoder: Any, x: torch.Tensor, start: int) -> torch.Tensor:
    for layer in decoder.layers[start:]:
        x = layer(x)
    return decoder.output_conv(x)


def _crops(
    oeset: OESet, idx: list[int], crop: tuple[int, int], centred: float, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Feature crops (B, 128, ch, cw) and their label crops (B, 8ch, 8cw)."""
    _, _, h, w = oeset.features.shape
    ch, cw = min(crop[0] // 8, h), min(crop[1] // 8, w)
    fs, ts = [], []
    for i in idx:
        tgt = oeset.targets[i]
        ys, xs = None, None
        if rng.random() < centred:
            pos = torch.nonzero(tgt == PASTED)
            if pos.numel():
                y, x = pos[int(rng.integers(pos.shape[0]))].tolist()
                ys = min(max(y // 8 - ch // 2, 0), h - ch)
                xs = min(max(x // 8 - cw // 2, 0), w - cw)
        if ys is None:
            ys, xs = int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1))
        fs.append(oeset.features[i, :, ys : ys + ch, xs : xs + cw])
        ts.append(tgt[8 * ys : 8 * (ys + ch), 8 * xs : 8 * (xs + cw)])
    return torch.stack(fs).float(), torch.stack(ts)


def train_oe(
    base_model: Any,
    oeset: OESet,
    config: OEConfig,
    *,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    device: str | torch.device = "cpu",
) -> tuple[OEHead, dict[str, Any], list[float]]:
    """Fine-tune ``config.stage`` of ``base_model``'s decoder on ``oeset`` -> (head, metrics,
    mean loss per epoch)."""
    device = torch.device(device)
    torch.manual_seed(config.seed)
    head = OEHead(stage=config.stage, score=config.score).load_base(base_model).to(device)
    frozen = copy.deepcopy(head.decoder).eval()
    for p in list(head.parameters()) + list(frozen.parameters()):
        p.requires_grad_(False)
    tuned = head.tuned_parameters()
    for p in tuned:
        p.requires_grad_(True)
    # BatchNorm keeps the base model's statistics (eval mode): crops of a few images would give
    # poor batch statistics, and the frozen targets use the running ones too
    head.eval()
    start = _split(head)
    opt = torch.optim.Adam(tuned, lr=config.lr)
    rng = np.random.default_rng(config.seed)
    n = len(oeset)
    steps = max(1, -(-n // config.batch_size))
    total = steps * config.epochs
    history: list[float] = []
    parts_sum = {"ce_uniform": 0.0, "kl": 0.0, "energy": 0.0}
    classes = getattr(base_model, "num_classes", None)
    before = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    t0 = last = time.perf_counter()
    step = 0
    try:
        for epoch in range(config.epochs):
            order = rng.permutation(n).tolist()
            running = 0.0
            for s in range(steps):
                if should_stop is not None and should_stop():
                    raise Cancelled("training cancelled")
                idx = order[s * config.batch_size : (s + 1) * config.batch_size]
                x, tgt = _crops(oeset, idx, config.crop, config.paste_centred, rng)
                x, tgt = x.to(device), tgt.to(device)
                with torch.no_grad():
                    for layer in head.decoder.layers[:start]:  # frozen prefix: shared
                        x = layer(x)
                    target_logits = _run(frozen, x, start)
                loss, parts = oe_loss(_run(head.decoder, x, start), target_logits, tgt,
                                      config.oe_weight, config.energy_weight,
                                      config.energy_margin, classes)  # fmt: skip
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                running += float(loss.detach())
                for k in parts_sum:
                    parts_sum[k] += parts[k]
                step += 1
                now = time.perf_counter()
                if progress is not None and (now - last > 0.5 or step == total):
                    last = now
                    progress(step / total, f"epoch {epoch + 1}/{config.epochs} loss "
                             f"{running / (s + 1):.4f}")  # fmt: skip
            history.append(running / steps)
    finally:
        if config.threads:
            torch.set_num_threads(before)
    for p in tuned:
        p.requires_grad_(False)
    metrics = {
        "final_loss": history[-1],
        "steps": total,
        "images": n,
        "mean_ce_uniform": parts_sum["ce_uniform"] / total,
        "mean_kl": parts_sum["kl"] / total,
        "mean_energy": parts_sum["energy"] / total,
        "tuned_parameters": int(sum(p.numel() for p in tuned)),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    return head.cpu().eval(), metrics, history


def train_oe_version(
    store: Any,
    workspace: Any,
    frozen: FrozenModel,
    config: OEConfig,
    *,
    activate: bool | str = False,
    device: str = "auto",
    evaluate: bool = True,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    job_id: int | None = None,
    render_sample: Any = None,
) -> dict[str, Any]:
    """Fine-tune a new ``oe`` version of the registered model ``frozen`` from the store's
    accepted samples; the same order and guarantees as ``training.trainer.train_head`` (nothing
    half-done on failure)."""
    from pathlib import Path

    from anomseg.models.heads import save_head
    from anomseg.predict import resolve_device
    from db.catalog import get_model
    from db.heads import (
        active_head,
        create_head_version,
        fail_head_version,
        finish_head_version,
    )
    from training.dataset import training_images_from_store
    from training.features import FeatureCache

    device = str(resolve_device(device))
    rule = ("always" if activate else "never") if isinstance(activate, bool) else activate
    rule_fn = ACTIVATION_RULES.get(rule)
    report = progress or (lambda f, m: None)
    workspace = Path(workspace)
    with store.read() as s:
        row = get_model(s, frozen.model_id)
        if row.architecture != "erfnet":
            raise InputError(
                f"outlier exposure fine-tunes ERFNet's decoder; model {row.name!r} is "
                f"{row.architecture!r} (train a stats or features head for it instead)"
            )
        if not row.checkpoint_path:
            raise InputError(f"model {row.name!r} has no checkpoint to fine-tune from")
        model_id = row.id
        images, notes = training_images_from_store(s, model_id, render_sample=render_sample)
        parent = active_head(s, model_id)
        parent_id = parent.id if parent is not None else None
        eval_sets = eval_datasets(s) if evaluate else []

    def sub(lo: float, hi: float) -> Progress:
        return lambda f, m: report(lo + (hi - lo) * f, m)

    cache = FeatureCache.for_workspace(workspace, config.cache_stride)
    oeset, snapshot = build_oe_set(
        images, cache, frozen.cache_key, frozen.size, frozen.predict, progress=sub(0.0, 0.2)
    )
    snap = snapshot.to_dict()
    snap["notes"] = notes
    hparams = {**config.to_dict(), "input_size": list(frozen.size)}
    with store.session() as s:
        hv = create_head_version(
            s, model_id, "oe", hparams=hparams, parent_id=parent_id, job_id=job_id, snapshot=snap
        )
        head_id, version = hv.id, hv.version
    try:
        base = frozen.get_predictor().model
        head, train_metrics, history = train_oe(
            base, oeset, config, progress=sub(0.2, 0.8), should_stop=should_stop, device=device
        )
        ckpt = workspace / "heads" / safe_name(frozen.name) / f"v{version}-oe.safetensors"
        digest = save_head(
            head,
            ckpt,
            model=frozen.name,
            model_sha256=frozen.checkpoint_sha256,
            base_checkpoint=str(Path(frozen.checkpoint_path).resolve()),
            version=version,
            hparams=hparams,
        )
        train_metrics = {**train_metrics, "history": history}
        with store.session() as s:
            finish_head_version(
                s, head_id, checkpoint_path=str(ckpt), checkpoint_sha256=digest,
                metrics={"train": train_metrics},
            )  # fmt: skip
        out = evaluate_and_record(
            store, head, frozen, eval_sets, model_id=model_id, head_id=head_id,
            version=version, kind="oe", train_metrics=train_metrics, rule=rule,
            rule_fn=rule_fn, report=report, should_stop=should_stop,
            snapshot_counts=snap["counts"],
        )  # fmt: skip
    except BaseException:
        with store.session() as s:
            fail_head_version(s, head_id)
        raise
    report(1.0, f"head:{version} ready{' and active' if out['active'] else ''}")
    return out
