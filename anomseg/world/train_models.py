"""Re-train the demo models that ship in ``anomseg/assets/demo_models`` (``anomseg demo train-models``).

Both models are trained from scratch on clean procedural scenes (never on pasted anomalies, so
that every pasted object is out-of-distribution for them), on CPU, in a fixed number of
iterations so that a re-run reproduces them (same seeds, same data order):

* ``demo-erfnet``: the standard 20-output ERFNet, pixel-wise cross-entropy on 19 trainIds.
* ``demo-eomt``: a ViT-Tiny-sized EoMT (patch 16). Trained with a per-pixel loss on its semantic
  output ``einsum(sigmoid(mask), softmax(class)[:-1])`` (normalised over classes) instead of the
  reference's Hungarian-matched mask loss: it needs no matcher, trains the same read-out the
  scorers use, and converges within the CPU budget. Masked attention is annealed off (prob 0), as
  EoMT ends its own schedule, so inference runs the plain ViT.

Weights are saved as fp16 safetensors plus a JSON of metadata (architecture, classes, input size,
seed, script version, held-out metrics).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

SCRIPT_VERSION = "1"
ASSET_DIR = Path(__file__).resolve().parent.parent / "assets" / "demo_models"
TRAIN_SIZE = (128, 256)  # (H, W) the demo models see; the Predictor resizes any image to it
HELDOUT_SEEDS = range(900_000, 900_040)


@dataclass(frozen=True)
class Phase:
    """One optimisation phase: "onecycle" from scratch, or "cosine" continuing the previous."""

    schedule: str
    iters: int
    lr: float


@dataclass(frozen=True)
class DemoModelSpec:
    """One demo model: registry name, constructor options, optimisation phases."""

    name: str
    arch: str
    options: dict
    phases: tuple[Phase, ...]
    batch: int = 8


DEMO_MODELS: dict[str, DemoModelSpec] = {
    "demo-erfnet": DemoModelSpec(
        "demo-erfnet",
        "erfnet",
        {"input_size": TRAIN_SIZE},
        (Phase("onecycle", 300, 2e-3), Phase("cosine", 700, 1e-3), Phase("cosine", 600, 5e-4)),
    ),
    # 8 blocks instead of ViT-Tiny's 12 keeps both models under the 15 MB repo budget (fp16)
    "demo-eomt": DemoModelSpec(
        "demo-eomt",
        "eomt_tiny",
        {"img_size": TRAIN_SIZE, "input_size": TRAIN_SIZE, "depth": 8},
        (Phase("onecycle", 600, 1e-3), Phase("cosine", 900, 5e-4), Phase("cosine", 700, 3e-4)),
    ),
}


def _scene(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A full-size scene brought to TRAIN_SIZE exactly as the Predictor will bring any image."""
    from anomseg.imageio import resize_image, resize_label
    from anomseg.world.scenes import DEFAULT_SIZE, generate_scene

    bg = generate_scene(seed, DEFAULT_SIZE)
    return resize_image(bg.rgb, TRAIN_SIZE), resize_label(bg.labels, TRAIN_SIZE)


def make_pool(seeds: range, workers: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Scenes for the given seeds as uint8 tensors (N,3,H,W) and (N,H,W)."""
    with ProcessPoolExecutor(max_workers=workers) as ex:
        pairs = list(ex.map(_scene, seeds, chunksize=8))
    rgb = torch.from_numpy(np.stack([p[0] for p in pairs])).permute(0, 3, 1, 2).contiguous()
    lab = torch.from_numpy(np.stack([p[1] for p in pairs])).long()
    return rgb, lab


def _augment(rgb: torch.Tensor, lab: torch.Tensor, g: torch.Generator):
    """Flip + brightness/contrast jitter; enough for a procedural world."""
    x = rgb.float() / 255.0
    flip = torch.rand(x.shape[0], generator=g) < 0.5
    x[flip] = x[flip].flip(-1)
    lab = lab.clone()
    lab[flip] = lab[flip].flip(-1)
    gain = 0.8 + 0.4 * torch.rand(x.shape[0], 1, 1, 1, generator=g)
    bias = 0.1 * (torch.rand(x.shape[0], 1, 1, 1, generator=g) - 0.5)
    return (x * gain + bias).clamp(0, 1), lab


def _loss(model, arch: str, x: torch.Tensor, lab: torch.Tensor, weight: torch.Tensor):
    if arch == "erfnet":
        out = model(x)
        # the 20th (void) channel is never a target: weight 0, its logit is pushed down
        w = torch.cat([weight, weight.new_zeros(out.shape[1] - len(weight))])
        return F.cross_entropy(out.float(), lab, weight=w, ignore_index=255)
    mask_logits, class_logits, _ = model(x)
    probs = torch.einsum(
        "bqhw,bqc->bchw", mask_logits.sigmoid(), class_logits.softmax(-1)[..., :-1]
    )
    probs = probs / probs.sum(1, keepdim=True).clamp_min(1e-6)
    small = F.interpolate(lab[:, None].float(), probs.shape[-2:], mode="nearest")[:, 0].long()
    return F.nll_loss(probs.clamp_min(1e-6).log(), small, weight=weight, ignore_index=255)


def class_weights(lab: torch.Tensor, num_classes: int = 19) -> torch.Tensor:
    """ENet-style 1/log(1.02 + freq) weights so thin classes (poles, signs) are learnt."""
    counts = torch.bincount(lab[lab != 255].flatten(), minlength=num_classes)[:num_classes]
    freq = counts.float() / counts.sum()
    w = 1.0 / torch.log(1.02 + freq)
    w[counts == 0] = 0
    return w / w[counts > 0].mean()


def heldout_miou(model, seeds=HELDOUT_SEEDS) -> dict:
    """mIoU of a model on held-out procedural scenes (classes present in the ground truth)."""
    from anomseg.metrics import ConfusionMatrix

    rgb, lab = make_pool(seeds)
    cm = ConfusionMatrix(num_classes=19, ignore_index=255)
    model.eval()
    with torch.inference_mode():
        for i in range(0, len(rgb), 8):
            out = model.predict_batch(rgb[i : i + 8].float() / 255.0)["logits"]
            cm.update(out[:, :19].argmax(1), lab[i : i + 8])
    res = cm.compute()
    iou = [None if np.isnan(v) else round(float(v), 4) for v in res["iou"]]
    return {"miou": res["miou"], "iou": iou, "pixel_accuracy": res["pixel_accuracy"]}


def _run_phase(model, spec, arch, rgb, lab, weight, g, n_iter, lr, schedule, progress, label):
    """One optimisation phase; ``schedule`` is "onecycle" (from scratch) or "cosine" (continue)."""
    fmt = torch.channels_last if arch == "erfnet" else torch.contiguous_format
    model = model.to(memory_format=fmt).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    if schedule == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=n_iter, pct_start=0.05)
    else:
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, n_iter)
    losses = []
    for it in range(n_iter):
        idx = torch.randint(len(rgb), (spec.batch,), generator=g)
        x, y = _augment(rgb[idx], lab[idx], g)
        x = x.contiguous(memory_format=fmt)
        # bf16 autocast: ERFNet's factorised convs run ~3x faster in bf16 on AVX512-BF16 CPUs
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=arch == "erfnet"):
            loss = _loss(model, arch, x, y, weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if progress and (it % 10 == 0 or it == n_iter - 1):
            msg = f"{spec.name} {label} iter {it + 1}/{n_iter} loss {np.mean(losses[-20:]):.3f}"
            progress((it + 1) / n_iter, msg)
    return float(np.mean(losses[-50:]))


def train_one(
    spec: DemoModelSpec,
    train_seeds: range,
    seed: int = 0,
    iters: int | None = None,
    progress: Callable[[float, str], None] | None = None,
    pool: tuple[torch.Tensor, torch.Tensor] | None = None,
    work_dir: Path | None = None,
):
    """Train one demo model from scratch through its phases; returns (model, log dict).

    Each phase ends in an fp16 checkpoint in ``work_dir`` and the next phase starts from that
    file, so a run interrupted between phases resumes from the newest one and reproduces the
    weights of an uninterrupted run. ``iters`` overrides every phase's length (smoke runs).
    """
    from anomseg.models import create_model
    from anomseg.models.checkpoints import load_checkpoint, save_checkpoint

    rgb, lab = pool if pool is not None else make_pool(train_seeds)
    weight = class_weights(lab)
    torch.manual_seed(seed)
    model = create_model(spec.arch, **spec.options)
    if hasattr(model, "attn_mask_probs"):
        model.attn_mask_probs.zero_()
    t0, log = time.time(), {"phases": []}
    work = Path(work_dir or ASSET_DIR / ".work")
    for k, phase in enumerate(spec.phases, start=1):
        ckpt = work / f"{spec.name}.phase{k}-s{seed}.safetensors"
        if ckpt.is_file() and iters is None:
            load_checkpoint(model, ckpt)
            log["phases"].append({"phase": k, "resumed": ckpt.name})
            continue
        torch.manual_seed(seed + k - 1)
        g = torch.Generator().manual_seed(seed + k - 1)
        n = iters or phase.iters
        loss = _run_phase(
            model, spec, spec.arch, rgb, lab, weight, g, n, phase.lr, phase.schedule,
            progress, f"phase {k}",
        )
        save_checkpoint(model, ckpt, {"phase": k, "iters": n}, fp16=True)
        load_checkpoint(model, ckpt)  # the next phase starts from the fp16 file (resumable)
        log["phases"].append({"phase": k, "iters": n, "final_loss": loss})
    model.eval()
    log["seconds"] = time.time() - t0
    return model, log


def train_models(
    out_dir: Path = ASSET_DIR,
    names: tuple[str, ...] = tuple(DEMO_MODELS),
    n_train: int = 320,
    seed: int = 0,
    iters: int | None = None,
    progress: Callable[[float, str], None] | None = None,
) -> dict[str, dict]:
    """Train and save the demo models; returns their metadata (incl. held-out mIoU)."""
    from anomseg.models.checkpoints import save_checkpoint

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train_seeds = range(seed * 100_000, seed * 100_000 + n_train)
    pool = make_pool(train_seeds)
    results = {}
    for name in names:
        spec = DEMO_MODELS[name]
        model, log = train_one(spec, train_seeds, seed, iters, progress, pool, out_dir / ".work")
        metrics = heldout_miou(model)
        meta = {
            "name": name,
            "architecture": spec.arch,
            "options": {k: list(v) if isinstance(v, tuple) else v for k, v in spec.options.items()},
            "classes": 19,
            "input_size": list(TRAIN_SIZE),
            "training_seed": seed,
            "train_scenes": n_train,
            "script_version": SCRIPT_VERSION,
            "train_log": log,
            "metrics": {"heldout_miou": metrics["miou"], "heldout_scenes": len(HELDOUT_SEEDS)},
        }
        save_checkpoint(model, out_dir / f"{name}.safetensors", meta, fp16=True)
        results[name] = meta
        if progress:
            progress(
                1.0, f"{name}: held-out mIoU {metrics['miou'] * 100:.1f}% in {log['seconds']:.0f}s"
            )
    return results
