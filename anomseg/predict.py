"""The Predictor: one forward per (model, image, input size), cached; every scorer reads its output.

Like segment-anything's predictor, the expensive part (the network) runs once and many cheap
queries (the scorers of ``anomseg.scoring``) follow. Protocol (the seed's): the RGB image is
resized bilinearly to ``input_size`` with Pillow, scaled to [0, 1] (no normalisation) and run under
``torch.inference_mode`` (bf16 autocast on CUDA, fp32 on CPU). Outputs are split per image and
kept as float32 CPU tensors in a ``Prediction``.

Cache: an LRU bounded in bytes (default 1 GiB), keyed by (model identity, sha256 of the image
pixels, input size). The model identity is ``arch@fingerprint`` where the fingerprint is the
model's ``checkpoint_sha256`` attribute when the loader set one, else a fingerprint of its state
dict, so two models never share entries even when one cache object is shared between predictors.
A model modified in place after the first prediction must be given a new Predictor (or
``clear_cache()``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from anomseg.cache import LRU
from anomseg.errors import InputError
from anomseg.imageio import array_sha256, image_sha256, pil_to_rgb, read_image, resize_image
from anomseg.prediction import Prediction

DEFAULT_CACHE_BYTES = 1 << 30
PREDICTION_FIELDS = (
    "logits",
    "pixel_class_logits",
    "mask_logits",
    "class_logits",
    "features",
    "window_scores",
    "window_features",
)

ImageLike = np.ndarray | Image.Image | str | os.PathLike
Size = tuple[int, int]


class PredictionCache(LRU):
    """A thread-safe LRU of ``Prediction`` objects bounded by their total bytes: tensors plus
    the scoring memo, re-measured whenever a held prediction's memo changes."""

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        if max_bytes < 0:
            raise InputError(f"cache size must be >= 0 bytes, got {max_bytes}")
        super().__init__(max_items=1 << 30, max_bytes=int(max_bytes), sizeof=Prediction.nbytes)

    def put(self, key: Any, value: Prediction) -> None:
        """Store a prediction; its memo's growth is charged to this cache from now on."""
        value.on_resize = lambda _p, key=key: self.resize(key)
        super().put(key, value)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` -> cuda when available else cpu; an unavailable cuda request is an InputError."""
    if isinstance(device, torch.device):
        return device
    name = str(device).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise InputError(f"device {device!r}; expected auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r} requested but CUDA is not available here")
    return dev


def model_fingerprint(model: torch.nn.Module) -> str:
    """A short identity of a model's weights: its checkpoint hash if known, else a state-dict
    fingerprint (names, shapes, a leading slice of each tensor and its sum)."""
    for attr in ("checkpoint_sha256", "checkpoint_hash", "fingerprint"):
        value = getattr(model, attr, None)
        if isinstance(value, str) and value:
            return value[:16]
    h = hashlib.sha256()
    with torch.no_grad():
        for name, t in model.state_dict().items():
            h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
            if t.device.type == "meta" or t.numel() == 0:
                continue
            flat = t.detach().reshape(-1)
            head = flat[:4096].to("cpu", torch.float64).numpy()
            h.update(head.tobytes())
            h.update(np.float64(flat.double().sum().item()).tobytes())
    return h.hexdigest()[:16]


def image_identity(image: ImageLike, arr: np.ndarray, given: str | None = None) -> str:
    """The cache identity of an image: the sha256 of its file (``given``, or read from a path),
    as the store keys images; only an image that never was a file (an upload in memory, a
    render) is named by its pixels."""
    if given:
        return given
    if isinstance(image, str | os.PathLike):
        return image_sha256(image)
    return array_sha256(arr)


def to_rgb_array(image: ImageLike) -> np.ndarray:
    """An image given as array, PIL image or path -> RGB uint8 (H, W, 3)."""
    if isinstance(image, str | os.PathLike):
        return read_image(Path(image))
    if isinstance(image, Image.Image):
        return pil_to_rgb(image)
    if isinstance(image, np.ndarray):
        arr = image
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=2)
        if arr.ndim != 3 or arr.shape[2] not in (3, 4):
            raise InputError(f"image array of shape {arr.shape}; expected (H, W, 3) RGB")
        if arr.dtype != np.uint8:
            if not np.issubdtype(arr.dtype, np.floating):
                raise InputError(
                    f"image array of dtype {arr.dtype}; expected uint8 or float in [0, 1]"
                )
            arr = np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(arr[..., :3])
    raise InputError(
        f"image of type {type(image).__name__}; expected a numpy array, a PIL image or a path"
    )


def _own_cpu_f32(t: torch.Tensor) -> torch.Tensor:
    """A contiguous float32 CPU copy owning its storage (never a view into the batch)."""
    if t.device.type == "cpu" and t.dtype == torch.float32:
        return t.clone(memory_format=torch.contiguous_format)
    return t.to("cpu", torch.float32).contiguous()


def _parse_size(size: Any) -> Size | None:
    if size is None:
        return None
    try:
        h, w = (int(v) for v in size)
    except (TypeError, ValueError):
        raise InputError(f"input size {size!r}; expected (H, W)") from None
    if h <= 0 or w <= 0:
        raise InputError(f"input size {size!r}; expected positive (H, W)")
    return h, w


def prefetched(items: Iterable[Any], depth: int = 2) -> Iterator[Any]:
    """Iterate ``items`` in a background thread, ``depth`` items ahead (decoding with Pillow
    and numpy releases the GIL, so it runs while the caller's forward does)."""
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(entry: tuple[Any, BaseException | None]) -> bool:
        while not stop.is_set():  # a consumer that stopped early must not leave us blocked
            try:
                q.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def feed() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    return
            put((done, None))
        except BaseException as exc:  # handed to the consumer, raised there
            put((done, exc))

    t = threading.Thread(target=feed, daemon=True, name="anomseg-prefetch")
    t.start()
    try:
        while True:
            item, exc = q.get()
            if item is done:
                if exc is not None:
                    raise exc
                return
            yield item
    finally:
        stop.set()
        t.join(timeout=5)


class Predictor:
    """Runs a model once per image and input size and caches the ``Prediction``.

    ``input_size``: (H, W) the image is resized to; None = the model's ``default_input_size``;
    ``"native"`` = no resizing. ``cache`` may be shared between predictors (keys hold the model
    identity); otherwise a private cache of ``cache_bytes`` is made.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        device: str | torch.device = "auto",
        input_size: Size | str | None = None,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        cache: PredictionCache | None = None,
        autocast: bool = True,
        channels_last: bool = True,
        compile: bool = False,
    ) -> None:
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        if channels_last and self.device.type == "cuda":
            # cuDNN convolutions (and bf16 tensor cores) want NHWC; the input is NHWC already
            self.model = self.model.to(memory_format=torch.channels_last)
        # torch.compile traces on the first batch of each shape (minutes for a ViT-L): opt-in
        self._predict_batch = (
            torch.compile(self.model.predict_batch) if compile else self.model.predict_batch
        )
        self._copy_stream: Any = None
        self.arch = str(getattr(model, "arch", type(model).__name__))
        self.num_classes = int(getattr(model, "num_classes", 19))
        if isinstance(input_size, str):
            if input_size != "native":
                raise InputError(f"input size {input_size!r}; expected (H, W), None or 'native'")
            self.input_size: Size | None = None
        elif input_size is None:
            self.input_size = _parse_size(getattr(model, "default_input_size", None))
        else:
            self.input_size = _parse_size(input_size)
        self.cache = cache if cache is not None else PredictionCache(cache_bytes)
        self.autocast = autocast and self.device.type == "cuda"
        self._model_key: str | None = None
        self.forward_calls = 0  # number of model forwards (batches) run

    @property
    def model_key(self) -> str:
        """``arch@fingerprint``: the model part of every cache key."""
        if self._model_key is None:
            self._model_key = f"{self.arch}@{model_fingerprint(self.model)}"
        return self._model_key

    def target_size(self, image_hw: Size) -> Size:
        """The size an image of ``image_hw`` is run at."""
        return (
            self.input_size if self.input_size is not None else (int(image_hw[0]), int(image_hw[1]))
        )

    def _key(self, digest: str, size: Size) -> tuple:
        return (self.model_key, digest, size)

    def clear_cache(self) -> None:
        """Forget every cached prediction."""
        self.cache.clear()

    # ------------------------------------------------------------------ forward

    def _input(self, batch: Sequence[np.ndarray]) -> torch.Tensor:
        """uint8 (B, H, W, 3) images -> float (B, 3, H, W) in [0, 1] on the device."""
        x = torch.from_numpy(np.stack(batch))
        if self.device.type == "cuda":
            # pinned host memory, copied on a side stream: the copy of this batch overlaps
            # whatever the compute stream still runs
            if self._copy_stream is None:
                self._copy_stream = torch.cuda.Stream(self.device)
            x = x.pin_memory()
            compute = torch.cuda.current_stream(self.device)
            with torch.cuda.stream(self._copy_stream):
                xd = x.to(self.device, non_blocking=True)
            compute.wait_stream(self._copy_stream)
            xd.record_stream(compute)
            x = xd
        # (B, H, W, 3) viewed as (B, 3, H, W) is channels-last: left so on purpose, CPU
        # convolutions run about twice as fast on it as on a contiguous copy (and cuDNN too)
        return x.permute(0, 3, 1, 2).float().div_(255.0)

    def _outputs_to_cpu(self, out: dict[str, Any]) -> dict[str, torch.Tensor | None]:
        """The batch's output fields as float32 CPU tensors (one device->host copy each)."""
        if self.device.type != "cuda":
            return {name: out.get(name) for name in PREDICTION_FIELDS}
        host: dict[str, torch.Tensor | None] = {}
        compute = torch.cuda.current_stream(self.device)
        self._copy_stream.wait_stream(compute)
        with torch.cuda.stream(self._copy_stream):
            for name in PREDICTION_FIELDS:
                t = out.get(name)
                if t is None:
                    host[name] = None
                    continue
                t = t.float()
                t.record_stream(self._copy_stream)
                buf = torch.empty(t.shape, dtype=torch.float32, pin_memory=True)
                host[name] = buf.copy_(t, non_blocking=True)
        self._copy_stream.synchronize()
        return host

    def forward_arrays(self, batch: Sequence[np.ndarray], meta: Sequence[dict]) -> list[Prediction]:
        """Run the model on already-resized uint8 images of one size; returns one Prediction each.

        One code path for every batch size on every device: a batch of N gives the N
        Predictions that N single forwards give (tests check it on CPU).
        """
        x = self._input(batch)
        amp = (
            torch.autocast("cuda", dtype=torch.bfloat16)
            if self.autocast
            else contextlib.nullcontext()
        )
        with torch.inference_mode(), amp:
            out = self._predict_batch(x)
            out = self._outputs_to_cpu(out)
        self.forward_calls += 1
        preds = []
        for i, m in enumerate(meta):
            # copy outside inference mode: the per-image tensors are ordinary tensors (usable in
            # autograd later, e.g. head training) and do not pin the whole batch's storage
            fields = {
                name: None if out.get(name) is None else _own_cpu_f32(out[name][i])
                for name in PREDICTION_FIELDS
            }
            if fields["logits"] is None:
                raise InputError(f"model {self.arch!r} returned no 'logits' from predict_batch")
            preds.append(
                Prediction(
                    **fields,
                    num_classes=self.num_classes,
                    model_name=self.model_key,
                    meta=dict(m),
                )
            )
        return preds

    def _run_misses(
        self, items: list[tuple[np.ndarray, tuple, dict]], batch_size: int, store: bool = True
    ) -> list[Prediction]:
        """Forward (resized image, key, meta) items in batches of one size; fill the cache."""
        results: list[Prediction | None] = [None] * len(items)
        by_size: dict[tuple, list[int]] = {}
        for idx, (arr, _, _) in enumerate(items):
            by_size.setdefault(arr.shape, []).append(idx)
        for idxs in by_size.values():
            for start in range(0, len(idxs), batch_size):
                chunk = idxs[start : start + batch_size]
                preds = self.forward_arrays(
                    [items[j][0] for j in chunk], [items[j][2] for j in chunk]
                )
                for j, pred in zip(chunk, preds, strict=True):
                    if store:
                        self.cache.put(items[j][1], pred)
                    results[j] = pred
        return results  # type: ignore[return-value]

    def auto_batch_size(
        self, image_hw: Size | None = None, max_batch: int = 64, budget: float = 0.8
    ) -> int:
        """The batch size for this device: on CUDA the most images whose forward fits in
        ``budget`` of the free memory, from the peak memory of a one-image probe forward
        (outputs included); 1 on CPU, where a batch is no faster than its images one by one.
        """
        if self.device.type != "cuda":
            return 1
        hw = self.input_size or image_hw
        if hw is None:
            raise InputError("auto batch size at native input size needs the image size (H, W)")
        probe = np.zeros((*hw, 3), dtype=np.uint8)
        torch.cuda.synchronize(self.device)
        base = torch.cuda.memory_allocated(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        self.forward_arrays([probe], [{}])
        per_image = max(torch.cuda.max_memory_allocated(self.device) - base, 1)
        free, _total = torch.cuda.mem_get_info(self.device)
        return int(max(1, min(max_batch, (budget * free) // per_image)))

    # ------------------------------------------------------------------ public

    def predict(self, image: ImageLike, image_sha256: str | None = None) -> Prediction:
        """The Prediction for one image (array, PIL image or path); cached.

        ``image_sha256``: the image's identity when the caller knows it (the store's
        ``Image.sha256`` of the file an array was read from); see ``image_identity``.
        """
        return self.predict_many([image], batch_size=1, image_sha256s=[image_sha256])[0]

    def predict_many(
        self,
        images: Iterable[ImageLike],
        batch_size: int = 4,
        image_sha256s: Sequence[str | None] | None = None,
    ) -> list[Prediction]:
        """Predictions for many images, in order; cache hits skip the model, misses are batched."""
        if batch_size < 1:
            raise InputError(f"batch size {batch_size}; expected >= 1")
        out: list[Prediction | None] = []
        misses: list[tuple[np.ndarray, tuple, dict]] = []
        miss_pos: list[int] = []
        pending: dict[tuple, int] = {}  # a repeated image in one call runs once
        images = list(images)
        known = list(image_sha256s) if image_sha256s is not None else [None] * len(images)
        if len(known) != len(images):
            raise InputError(f"{len(known)} image hashes for {len(images)} images")
        for image, given in zip(images, known, strict=True):
            arr = to_rgb_array(image)
            digest = image_identity(image, arr, given)
            size = self.target_size(arr.shape[:2])
            key = self._key(digest, size)
            hit = self.cache.get(key)
            if (
                hit is None
                and key not in pending
                and (given or isinstance(image, str | os.PathLike))
            ):
                # the same pixels scored before as a bare array, named by its pixels
                hit = self.cache.get(self._key(array_sha256(arr), size))
            if hit is None and key in pending:
                out.append(None)
                miss_pos.append(pending[key])
                continue
            out.append(hit)
            if hit is None:
                pending[key] = len(misses)
                miss_pos.append(len(misses))
                meta = {"image_sha256": digest, "image_size": arr.shape[:2], "input_size": size}
                misses.append((resize_image(arr, size), key, meta))
        if misses:
            preds = self._run_misses(misses, batch_size)
            it = iter(miss_pos)
            out = [p if p is not None else preds[next(it)] for p in out]
        return out  # type: ignore[return-value]

    def predict_dataset(
        self,
        dataset: Any,
        batch_size: int = 1,
        num_workers: int = 0,
        use_cache: bool = True,
        skip: Callable[[np.ndarray | None], bool] | None = None,
        indices: Sequence[int] | None = None,
    ) -> Iterator[tuple[str, Prediction | None, np.ndarray | None]]:
        """Yield ``(name, Prediction, label at the input size)`` over a paired dataset (or the
        images ``indices`` of it, in that order: a rank's shard).

        Images are decoded, hashed and resized ahead of the forward: in DataLoader workers
        (``num_workers`` > 0, two batches each in flight) or in one prefetch thread; labels are
        resized with nearest neighbour to the input size (the seed protocol). Images whose
        label ``skip`` refuses are not run: they are yielded with ``None`` as their prediction.
        """
        from torch.utils.data import DataLoader, Subset

        from anomseg.data.benchmark import PairTensorDataset

        if batch_size < 1:
            raise InputError(f"batch size {batch_size}; expected >= 1")
        if num_workers < 0:
            raise InputError(f"number of workers {num_workers}; expected >= 0")
        items: Any = PairTensorDataset(dataset, self.input_size)
        if indices is not None:
            items = Subset(items, list(indices))
        loader = DataLoader(
            items,
            batch_size=batch_size,
            num_workers=num_workers,
            collate_fn=list,
            shuffle=False,
        )
        # worker errors come back wrapped in the worker's traceback: keep the user's one line
        batches = _unwrap_worker_errors(loader) if num_workers else prefetched(loader)
        for batch in batches:
            preds: list[Prediction | None] = []
            run: list[bool] = []
            misses: list[tuple[np.ndarray, tuple, dict]] = []
            for image, label, _name, digest, image_hw in batch:
                if skip is not None and skip(label):
                    preds.append(None)
                    run.append(False)
                    continue
                # the worker resized the image already; a native-size run keeps the image's size
                size = (int(image.shape[0]), int(image.shape[1]))
                key = self._key(digest, size)
                hit = self.cache.get(key) if use_cache else None
                preds.append(hit)
                run.append(hit is None)
                if hit is None:
                    meta = {"image_sha256": digest, "image_size": image_hw, "input_size": size}
                    misses.append((image, key, meta))
            if misses:
                fresh = iter(self._run_misses(misses, len(misses), store=use_cache))
                preds = [next(fresh) if r else p for p, r in zip(preds, run, strict=True)]
            for (_image, label, name, _digest, _hw), pred in zip(batch, preds, strict=True):
                yield name, pred, label


def _unwrap_worker_errors(loader: Any) -> Iterator[Any]:
    """Iterate a DataLoader, turning a user error raised in a worker back into its one line."""
    from anomseg.errors import AnomsegError, from_worker

    it = iter(loader)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except AnomsegError as exc:
            raise from_worker(exc) from None
        yield batch
