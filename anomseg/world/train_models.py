"""Re-train the demo models that ship in ``anomseg/assets/demo_models`` (``anomseg demo train-models``).

Both models are trained from scratch on procedural scenes, on CPU, in a fixed number of
iterations so that a re-run reproduces them (same seeds, same data order). The first phases see
clean scenes; the last one also sees the same scenes with objects pasted by the paste engine
(the training split's object instances, never the benchmarks') and adds outlier exposure as in
Meta-OoD (Chan et al., ICCV 2021): pasted pixels are pushed towards the uniform distribution over
the classes the world draws, so the post-hoc scores have something to find, as on models fine-tuned with COCO
pastes on Cityscapes.

* ``demo-erfnet``: the standard 20-output ERFNet, pixel-wise cross-entropy on 19 trainIds.
* ``demo-eomt``: a ViT-Tiny-sized EoMT (patch 16). Trained with a per-pixel loss on its semantic
  output ``einsum(sigmoid(mask), softmax(class)[:-1])`` (normalised over classes) instead of the
  reference's Hungarian-matched mask loss: it needs no matcher, trains the same read-out the
  scorers use, and converges within the CPU budget. The masks are upsampled (bilinear, as at
  inference) to half the input size before the loss: twice EoMT's own mask grid, so thin
  classes are supervised closer to the resolution they are scored at. Masked attention is annealed off (prob 0), as EoMT ends its own schedule, so
  inference runs the plain ViT.

Class weights tilt a model's posteriors by the weight of each class; for ERFNet the script
undoes part of that tilt afterwards (logit adjustment, Menon et al., ICLR 2021): it subtracts
``alpha * log(w_c)`` from the output bias, ``alpha`` picked on training scenes (never the held-out
ones) for the best mIoU.

The two models train at the same time, one single-threaded process each (small convolutions
keep one core busy better than they split across two).
Weights are saved as fp16 safetensors plus a JSON of metadata (architecture, classes, input size,
seed, script version, held-out metrics).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

SCRIPT_VERSION = "3"
ASSET_DIR = Path(__file__).resolve().parent.parent / "assets" / "demo_models"
TRAIN_SIZE = (128, 256)  # (H, W) the demo models see; the Predictor resizes any image to it
HELDOUT_SEEDS = range(900_000, 900_040)
N_TRAIN = 640  # training scenes; the ViT overfits 320 (train 61% vs held-out 47% mIoU)
# class weights 1/log(C_WEIGHT + freq), ENet's constant: milder weights (1.10) left person and
# sign unlearnt after 300-600 iterations in trials, so the strong boost stays
C_WEIGHT = 1.02
OOD = 254  # label of pasted (out-of-distribution) pixels in the outlier-exposure pool
OE_WEIGHT = 0.5  # outlier-exposure term next to the cross-entropy (both averaged per pixel)
ADJUST_GRID = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5)  # logit-adjustment strengths tried
ADJUST_SCENES = 160  # training scenes the adjustment is fitted on


@dataclass(frozen=True)
class Phase:
    """One optimisation phase: "onecycle" from scratch, or "cosine" continuing the previous;
    ``outliers``: train on the pasted scenes with outlier exposure."""

    schedule: str
    iters: int
    lr: float
    outliers: bool = False


@dataclass(frozen=True)
class DemoModelSpec:
    """One demo model: registry name, constructor options, optimisation phases."""

    name: str
    arch: str
    options: dict
    phases: tuple[Phase, ...]
    batch: int = 8
    adjust_bias: str | None = None  # output bias that logit adjustment is folded into


DEMO_MODELS: dict[str, DemoModelSpec] = {
    "demo-erfnet": DemoModelSpec(
        "demo-erfnet",
        "erfnet",
        {"input_size": TRAIN_SIZE},
        (
            Phase("onecycle", 500, 2e-3),
            Phase("cosine", 1100, 1e-3),
            Phase("cosine", 900, 5e-4, outliers=True),
        ),
        adjust_bias="decoder.output_conv.bias",
    ),
    # 8 blocks instead of ViT-Tiny's 12 keeps both models under the 15 MB repo budget (fp16)
    "demo-eomt": DemoModelSpec(
        "demo-eomt",
        "eomt_tiny",
        {"img_size": TRAIN_SIZE, "input_size": TRAIN_SIZE, "depth": 8},
        (
            Phase("onecycle", 800, 1e-3),
            Phase("cosine", 1200, 5e-4),
            Phase("cosine", 900, 3e-4, outliers=True),
        ),
    ),
}


def _scene(seed: int, pasted: bool = False) -> tuple[np.ndarray, ...]:
    """A full-size scene brought to TRAIN_SIZE exactly as the Predictor will bring any image;
    with ``pasted`` also the same scene with the training split's pastes (pasted pixels OOD)."""
    from anomseg.imageio import resize_image, resize_label
    from anomseg.world.scenes import DEFAULT_SIZE, generate_scene

    bg = generate_scene(seed, DEFAULT_SIZE)
    out = (resize_image(bg.rgb, TRAIN_SIZE), resize_label(bg.labels, TRAIN_SIZE))
    if not pasted:
        return out
    from anomseg.data.classes import IGNORE
    from anomseg.world.demo_data import paste_split

    rgb, gt, _ = paste_split(bg, "train", np.random.default_rng([seed, 0x0E]))
    labels = np.where(gt == 1, np.uint8(OOD), np.where(gt == 0, bg.labels, np.uint8(IGNORE)))
    return out + (resize_image(rgb, TRAIN_SIZE), resize_label(labels, TRAIN_SIZE))


def _stack(arrays, image: bool) -> torch.Tensor:
    t = torch.from_numpy(np.stack(arrays))  # uint8: 1/8 of the memory of int64
    return t.permute(0, 3, 1, 2).contiguous() if image else t


def make_pool(seeds: range, workers: int = 2, pasted: bool = False) -> tuple[torch.Tensor, ...]:
    """Scenes for the given seeds as uint8 tensors (N,3,H,W) and (N,H,W); with ``pasted`` two
    more: the same scenes with pastes, and their labels (pasted pixels ``OOD``)."""
    with ProcessPoolExecutor(max_workers=workers) as ex:
        items = list(ex.map(_scene, seeds, [pasted] * len(seeds), chunksize=8))
    return tuple(_stack([it[k] for it in items], k % 2 == 0) for k in range(len(items[0])))


def _augment(rgb: torch.Tensor, lab: torch.Tensor, g: torch.Generator):
    """Flip + brightness/contrast jitter; enough for a procedural world."""
    x = rgb.float() / 255.0
    flip = torch.rand(x.shape[0], generator=g) < 0.5
    x[flip] = x[flip].flip(-1)
    lab = lab.long()
    lab[flip] = lab[flip].flip(-1)
    gain = 0.8 + 0.4 * torch.rand(x.shape[0], 1, 1, 1, generator=g)
    bias = 0.1 * (torch.rand(x.shape[0], 1, 1, 1, generator=g) - 0.5)
    return (x * gain + bias).clamp(0, 1), lab


def _loss(model, arch: str, x: torch.Tensor, lab: torch.Tensor, weight: torch.Tensor):
    """Weighted cross-entropy on the 19 classes, plus outlier exposure on ``OOD`` pixels."""
    from anomseg.models import model_kind

    ood = lab == OOD
    target = lab.masked_fill(ood, 255)
    if model_kind(arch) == "pixel":  # a pixel model's forward gives the class logits
        out = model(x).float()
        # the 20th (void) channel is never a target: weight 0, its logit is pushed down
        w = torch.cat([weight, weight.new_zeros(out.shape[1] - len(weight))])
        loss = F.cross_entropy(out, target, weight=w, ignore_index=255)
        logp = out[:, : len(weight)].log_softmax(1)
    else:
        mask_logits, class_logits, _ = model(x)
        # half the input size: twice the mask grid for thin classes; full size costs +35% a step
        half = (x.shape[-2] // 2, x.shape[-1] // 2)
        masks = F.interpolate(mask_logits.float(), half, mode="bilinear").sigmoid()
        probs = torch.einsum("bqhw,bqc->bchw", masks, class_logits.float().softmax(-1)[..., :-1])
        logp = (probs / probs.sum(1, keepdim=True).clamp_min(1e-6)).clamp_min(1e-6).log()
        ood = F.interpolate(ood[:, None].float(), half, mode="nearest")[:, 0].bool()
        target = F.interpolate(target[:, None].float(), half, mode="nearest")[:, 0].long()
        loss = F.nll_loss(logp, target, weight=weight, ignore_index=255)
    if ood.any():
        # cross-entropy to the uniform distribution over the classes the data holds (weight >
        # 0): uniform over all 19 taught EoMT to predict walls and buses the world never draws
        loss = loss + OE_WEIGHT * (-logp[:, weight > 0].mean(1))[ood].mean()
    return loss


def class_weights(lab: torch.Tensor, num_classes: int = 19) -> torch.Tensor:
    """ENet-style 1/log(C_WEIGHT + freq) weights so thin classes (poles, signs) are learnt."""
    counts = torch.bincount(lab[lab != 255].flatten().long(), minlength=num_classes)[:num_classes]
    freq = counts.float() / counts.sum()
    w = 1.0 / torch.log(C_WEIGHT + freq)
    w[counts == 0] = 0
    return w / w[counts > 0].mean()


def _logits(model, rgb: torch.Tensor, num_classes: int = 19):
    """The model's class logits on uint8 scenes, batch by batch."""
    model.eval()
    with torch.inference_mode():
        for i in range(0, len(rgb), 8):
            yield i, model.predict_batch(rgb[i : i + 8].float() / 255.0)["logits"][:, :num_classes]


def apply_logit_adjustment(
    model, bias_name: str, rgb: torch.Tensor, lab: torch.Tensor, weight: torch.Tensor
) -> dict:
    """Fold ``-alpha * log(weight)`` into the output bias ``bias_name``, ``alpha`` from
    ``ADJUST_GRID`` with the best mIoU on the given (training) scenes; returns alpha and the
    mIoU of each alpha. Subtracting from the bias of the last (linear) layer is the same as
    subtracting from the logits, so the choice costs one forward pass."""
    from anomseg.metrics import ConfusionMatrix

    log_w = torch.where(weight > 0, weight.clamp_min(1e-12).log(), torch.zeros_like(weight))
    cms = {a: ConfusionMatrix(num_classes=len(weight), ignore_index=255) for a in ADJUST_GRID}
    for i, logits in _logits(model, rgb, len(weight)):
        y = lab[i : i + len(logits)].long()
        for a, cm in cms.items():
            cm.update((logits - a * log_w[:, None, None]).argmax(1), y)
    scores = {a: cm.compute()["miou"] for a, cm in cms.items()}
    alpha = max(ADJUST_GRID, key=lambda a: (scores[a], -a))  # ties: the smaller change
    bias = model.get_parameter(bias_name)
    with torch.no_grad():
        bias[: len(weight)] -= alpha * log_w.to(bias.dtype)
    return {"alpha": alpha, "fit_miou": {str(a): round(v, 4) for a, v in scores.items()}}


def heldout_miou(model, pool: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict:
    """mIoU of a model on the held-out procedural scenes (``pool``: ``make_pool(HELDOUT_SEEDS)``
    made once for several models), over every class with a non-empty union."""
    from anomseg.metrics import ConfusionMatrix

    rgb, lab = pool if pool is not None else make_pool(HELDOUT_SEEDS)
    cm = ConfusionMatrix(num_classes=19, ignore_index=255)
    for i, logits in _logits(model, rgb):
        cm.update(logits.argmax(1), lab[i : i + len(logits)].long())
    res = cm.compute()
    iou = [None if np.isnan(v) else round(float(v), 4) for v in res["iou"]]
    return {"miou": res["miou"], "iou": iou, "pixel_accuracy": res["pixel_accuracy"]}


def _run_phase(model, spec, arch, rgb, lab, weight, g, n_iter, lr, schedule, progress, label):
    """One optimisation phase; ``schedule`` is "onecycle" (from scratch) or "cosine" (continue)."""
    from anomseg.models import model_kind

    conv = model_kind(arch) == "pixel"  # ERFNet: a conv net; the mask models are ViTs
    fmt = torch.channels_last if conv else torch.contiguous_format
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
        # bf16 autocast: ERFNet's factorised convs run ~3x faster in bf16 on AVX512-BF16 CPUs;
        # the ViT gains only ~1.3x and learnt slower in a 600-iteration trial, so it stays fp32
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=conv):
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
    from anomseg.models.checkpoints import load_checkpoint, read_checkpoint, save_checkpoint

    pasted = any(ph.outliers for ph in spec.phases)
    rgb, lab, *outliers = pool if pool is not None else make_pool(train_seeds, pasted=pasted)
    if pasted and not outliers:
        raise ValueError(
            f"{spec.name}: an outlier-exposure phase needs a pool made with pasted=True"
        )
    weight = class_weights(lab)
    torch.manual_seed(seed)
    model = create_model(spec.arch, **spec.options)
    if hasattr(model, "attn_mask_probs"):
        model.attn_mask_probs.zero_()
    t0, log = time.time(), {"phases": []}
    work = Path(work_dir or ASSET_DIR / ".work")
    for k, phase in enumerate(spec.phases, start=1):
        ckpt = _phase_path(work, spec.name, k, seed)
        n = iters or phase.iters
        # a phase file is reused only if it was written by this very recipe (not a stale one)
        recipe = {
            "phase": k,
            "iters": n,
            "schedule": phase.schedule,
            "lr": phase.lr,
            "script_version": SCRIPT_VERSION,
            "train_scenes": len(rgb),
            "outliers": phase.outliers,
        }
        if ckpt.is_file() and iters is None:
            _, meta = read_checkpoint(ckpt)
            if all(meta.get(key) == value for key, value in recipe.items()):
                load_checkpoint(model, ckpt)
                log["phases"].append(
                    {**recipe, "final_loss": meta.get("final_loss"), "resumed": True}
                )
                continue
        torch.manual_seed(seed + k - 1)
        g = torch.Generator().manual_seed(seed + k - 1)
        loss = _run_phase(
            model, spec, spec.arch, *(outliers if phase.outliers else (rgb, lab)), weight, g, n,
            phase.lr, phase.schedule,
            progress, f"phase {k}",
        )  # fmt: skip
        save_checkpoint(model, ckpt, {**recipe, "final_loss": loss}, fp16=True)
        load_checkpoint(model, ckpt)  # the next phase starts from the fp16 file (resumable)
        log["phases"].append({**recipe, "final_loss": loss})
    model.eval()
    log["seconds"] = time.time() - t0
    return model, log


def _phase_path(work: Path, name: str, k: int, seed: int) -> Path:
    return work / f"{name}.phase{k}-s{seed}.safetensors"


def _train_worker(name, pool_path, seed, iters, work_dir, threads, messages) -> None:
    """Child process: train one model through its phases; progress and the log go to ``messages``."""
    torch.set_num_threads(threads)
    try:
        pool = tuple(torch.load(pool_path, weights_only=True))

        def progress(frac: float, msg: str) -> None:
            messages.put(("progress", name, frac, msg))

        _, log = train_one(DEMO_MODELS[name], None, seed, iters, progress, pool, work_dir)
        messages.put(("done", name, log, ""))
    except BaseException:
        messages.put(("error", name, None, traceback.format_exc()))


def _train_parallel(names, pool, seed, iters, work, progress) -> dict[str, dict]:
    """Train ``names`` at once, one process each (spawned: no forked torch state)."""
    pool_path = work / f"pool-s{seed}-n{len(pool[0])}.pt"
    torch.save(pool, pool_path)
    threads = max(1, (os.cpu_count() or 1) // len(names))
    ctx = mp.get_context("spawn")
    messages = ctx.Queue()
    procs = {
        n: ctx.Process(
            target=_train_worker, args=(n, str(pool_path), seed, iters, work, threads, messages)
        )
        for n in names
    }
    for p in procs.values():
        p.start()
    logs: dict[str, dict] = {}
    fracs = dict.fromkeys(names, 0.0)
    try:
        while len(logs) < len(names):
            try:
                kind, name, payload, text = messages.get(timeout=5)
            except queue.Empty:
                dead = [n for n, p in procs.items() if n not in logs and not p.is_alive()]
                if dead and messages.empty():
                    raise RuntimeError(f"demo model training of {dead} died") from None
                continue
            if kind == "error":
                raise RuntimeError(f"training {name} failed:\n{text}")
            if kind == "done":
                logs[name] = payload
            elif progress:
                fracs[name] = payload
                progress(sum(fracs.values()) / len(names), text)
    finally:
        for p in procs.values():
            if p.is_alive() and len(logs) < len(names):
                p.terminate()
            p.join()
        pool_path.unlink(missing_ok=True)
    return logs


def train_models(
    out_dir: Path = ASSET_DIR,
    names: tuple[str, ...] = tuple(DEMO_MODELS),
    n_train: int = N_TRAIN,
    seed: int = 0,
    iters: int | None = None,
    progress: Callable[[float, str], None] | None = None,
    parallel: bool | None = None,
) -> dict[str, dict]:
    """Train and save the demo models; returns their metadata (incl. held-out mIoU).

    ``parallel`` (default: when there are two cores or more) trains the models at the same
    time, one process each; otherwise one after the other in this process.
    """
    from anomseg.models import create_model
    from anomseg.models.checkpoints import load_checkpoint, save_checkpoint

    out_dir = Path(out_dir)
    work = out_dir / ".work"
    work.mkdir(parents=True, exist_ok=True)
    train_seeds = range(seed * 100_000, seed * 100_000 + n_train)
    t0 = time.time()
    pool = make_pool(
        train_seeds, pasted=any(ph.outliers for n in names for ph in DEMO_MODELS[n].phases)
    )
    if parallel is None:
        parallel = len(names) > 1 and (os.cpu_count() or 1) >= 2
    if parallel:
        logs = _train_parallel(names, pool, seed, iters, work, progress)
    else:
        logs = {
            n: train_one(DEMO_MODELS[n], None, seed, iters, progress, pool, work)[1] for n in names
        }
    results = {}
    heldout = make_pool(HELDOUT_SEEDS)
    for name in names:
        spec = DEMO_MODELS[name]
        model = create_model(spec.arch, **spec.options)
        load_checkpoint(model, _phase_path(work, name, len(spec.phases), seed))
        adjust = None
        if spec.adjust_bias:
            fit = pool[0][:ADJUST_SCENES], pool[1][:ADJUST_SCENES]
            adjust = apply_logit_adjustment(model, spec.adjust_bias, *fit, class_weights(pool[1]))
        metrics = heldout_miou(model, heldout)
        meta = {
            "name": name,
            "architecture": spec.arch,
            "options": {k: list(v) if isinstance(v, tuple) else v for k, v in spec.options.items()},
            "classes": 19,
            "input_size": list(TRAIN_SIZE),
            "training_seed": seed,
            "train_scenes": n_train,
            "script_version": SCRIPT_VERSION,
            "train_log": {**logs[name], "wall_seconds_all_models": round(time.time() - t0, 1)},
            "logit_adjustment": adjust,
            "metrics": {
                "heldout_miou": metrics["miou"],
                "heldout_iou": metrics["iou"],
                "heldout_scenes": len(HELDOUT_SEEDS),
            },
        }
        save_checkpoint(model, out_dir / f"{name}.safetensors", meta, fp16=True)
        results[name] = meta
        if progress:
            progress(1.0, f"{name}: held-out mIoU {metrics['miou'] * 100:.1f}%")
    return results
