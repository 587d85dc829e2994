"""Datasets, images and models: registration, look-up, and the training-split guard."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from anomseg.errors import DatasetError, InputError
from anomseg.hashing import file_sha256
from db.models import DATASET_ROLES, EVAL_ROLES, Dataset, Image, Model, row_id


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's content; an unreadable file is a DatasetError naming it."""
    try:
        return file_sha256(path, chunk)
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc.strerror or exc}") from None


def _check_role(role: str) -> None:
    if role not in DATASET_ROLES:
        raise InputError(f"dataset role {role!r} is unknown; expected one of {DATASET_ROLES}")


def register_dataset(
    session: Session,
    name: str,
    role: str,
    root: str | os.PathLike,
    layout: str = "",
    label_remap: Mapping[str, Any] | None = None,
    *,
    check_root: bool = True,
) -> Dataset:
    """Create a dataset, or return the existing one of that name if role and root match.

    Changing the role of an existing dataset is refused: a benchmark silently turned into
    training data would poison every leaderboard row. Moving it to another root is refused too:
    its images (and the flags painted on them) would silently become other pictures.
    """
    _check_role(role)
    if not name or len(name) > 200:
        raise InputError(f"dataset name {name!r} must be 1..200 characters")
    root_path = Path(root).expanduser()
    if check_root:
        if not root_path.is_dir():
            raise DatasetError(f"dataset {name!r}: root {root_path} is not a directory")
        root_path = root_path.resolve()
    existing = session.scalar(select(Dataset).where(Dataset.name == name))
    if existing is not None:
        if existing.role != role:
            raise InputError(
                f"dataset {name!r} is already registered with role {existing.role!r}; "
                f"refusing to change it to {role!r}"
            )
        if check_root and Path(existing.root).resolve() != root_path:
            raise InputError(
                f"dataset {name!r} is already registered with root {existing.root}; refusing to "
                f"move it to {root_path} (its images and flags would change meaning): register "
                "the new folder under another name"
            )
        existing.layout = layout or existing.layout
        if label_remap is not None:
            existing.label_remap = dict(label_remap)
        return existing
    ds = Dataset(name=name, role=role, root=str(root_path), layout=layout)
    ds.label_remap = dict(label_remap) if label_remap is not None else None
    session.add(ds)
    session.flush()
    return ds


def get_dataset(session: Session, name_or_id: str | int) -> Dataset:
    """A dataset by name or id; InputError listing the known names otherwise."""
    if isinstance(name_or_id, int):
        ds = session.get(Dataset, name_or_id)
    else:
        ds = session.scalar(select(Dataset).where(Dataset.name == name_or_id))
    if ds is None:
        known = ", ".join(session.scalars(select(Dataset.name).order_by(Dataset.name))) or "(none)"
        raise InputError(f"dataset {name_or_id!r} is not registered; known: {known}")
    return ds


def list_datasets(session: Session, role: str | None = None) -> list[Dataset]:
    """Datasets, optionally of one role, by name."""
    q = select(Dataset).order_by(Dataset.name)
    if role is not None:
        _check_role(role)
        q = q.where(Dataset.role == role)
    return list(session.scalars(q))


def relative_image_path(dataset: Dataset, path: str | os.PathLike) -> str:
    """``path`` as a POSIX path relative to the dataset root; refuses anything outside it."""
    p = Path(path)
    root = Path(dataset.root)
    if p.is_absolute():
        try:
            rel = p.resolve().relative_to(root.resolve())
        except ValueError:
            raise InputError(f"image {p} is outside dataset {dataset.name!r} root {root}") from None
        rel_s = rel.as_posix()
    else:
        rel_s = PurePosixPath(p.as_posix()).as_posix()
    parts = PurePosixPath(rel_s).parts
    if not parts or ".." in parts or rel_s.startswith("/"):
        raise InputError(f"image path {str(path)!r} escapes dataset {dataset.name!r} root")
    return rel_s


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) read from the file header."""
    from PIL import Image as PILImage
    from PIL import UnidentifiedImageError

    try:
        with PILImage.open(path) as im:
            return int(im.width), int(im.height)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"{path} is not a readable image ({exc})") from None
    except PILImage.DecompressionBombError as exc:
        raise InputError(
            f"{path}: image is too large, a possible decompression bomb ({exc})"
        ) from None


def add_image(
    session: Session, dataset: Dataset, path: str, sha256: str, width: int, height: int
) -> Image:
    """Insert or update an image row without touching the file (imports, generated data)."""
    rel = relative_image_path(dataset, path)
    if width <= 0 or height <= 0:
        raise InputError(f"image {rel!r}: size {width}x{height} must be positive")
    img = session.scalar(select(Image).where(Image.dataset_id == dataset.id, Image.path == rel))
    if img is None:
        img = Image(dataset_id=dataset.id, path=rel, sha256=sha256, width=width, height=height)
        session.add(img)
    elif (img.sha256, img.width, img.height) != (sha256, width, height):
        # flags and cached features are keyed to the registered pixels: never rewrite them
        raise InputError(
            f"image {rel!r} of dataset {dataset.name!r} changed since it was registered (sha256 "
            f"{img.sha256[:12]}… {img.width}x{img.height}, now {sha256[:12]}… {width}x{height}); "
            "register the changed folder as a new dataset"
        )
    session.flush()
    return img


def register_images(
    session: Session, dataset: Dataset, paths: Iterable[str | os.PathLike]
) -> list[Image]:
    """Register image files of a dataset (hashing them and reading their size)."""
    out = []
    root = Path(dataset.root)
    for p in paths:
        rel = relative_image_path(dataset, p)
        full = root / rel
        if not full.is_file():
            raise DatasetError(f"dataset {dataset.name!r}: image {full} does not exist")
        w, h = image_size(full)
        out.append(add_image(session, dataset, rel, sha256_file(full), w, h))
    return out


def get_image(session: Session, dataset: Dataset | str | int, path: str) -> Image:
    """An image by dataset and relative path."""
    ds = dataset if isinstance(dataset, Dataset) else get_dataset(session, dataset)
    rel = relative_image_path(ds, path)
    img = session.scalar(select(Image).where(Image.dataset_id == ds.id, Image.path == rel))
    if img is None:
        raise InputError(f"image {rel!r} is not registered in dataset {ds.name!r}")
    return img


def get_image_by_id(session: Session, image_id: object) -> Image:
    """An image by id; InputError when the id is malformed or no longer registered."""
    img = session.get(Image, row_id(image_id, "image id"))
    if img is None:
        raise InputError(f"image id {image_id} is not registered (deleted?)")
    return img


def image_ids_and_paths(session: Session, dataset_id: int) -> list[tuple[int, str]]:
    """(image id, relative path) of a dataset's images, unordered (callers sort naturally)."""
    rows = session.execute(select(Image.id, Image.path).where(Image.dataset_id == dataset_id))
    return [(int(i), str(p)) for i, p in rows]


def dataset_image_counts(session: Session) -> list[tuple[int, str, str, int]]:
    """(id, name, role, number of images) of every dataset, by role then name."""
    q = (
        select(Dataset.id, Dataset.name, Dataset.role, func.count(Image.id))
        .join(Image, Image.dataset_id == Dataset.id, isouter=True)
        .group_by(Dataset.id)
        .order_by(Dataset.role, Dataset.name)
    )
    return [(int(i), str(n), str(r), int(c)) for i, n, r, c in session.execute(q)]


def row_counts(session: Session) -> dict[str, int]:
    """How many models, datasets and images are registered."""
    return {
        "models": session.scalar(select(func.count(Model.id))) or 0,
        "datasets": session.scalar(select(func.count(Dataset.id))) or 0,
        "images": session.scalar(select(func.count(Image.id))) or 0,
    }


def list_images(session: Session, dataset: Dataset | str | int) -> list[Image]:
    """Images of a dataset, by path."""
    ds = dataset if isinstance(dataset, Dataset) else get_dataset(session, dataset)
    return list(
        session.scalars(select(Image).where(Image.dataset_id == ds.id).order_by(Image.path))
    )


def register_model(
    session: Session,
    name: str,
    architecture: str,
    checkpoint_path: str | os.PathLike | None = None,
    *,
    input_size: tuple[int, int] | None = None,
    meta: Mapping[str, Any] | None = None,
    sha256: str | None = None,
    replace: bool = False,
) -> Model:
    """Create a model entry (the checkpoint is hashed unless ``sha256`` is given).

    The same name with the same architecture and checkpoint hash updates the entry in place.
    Another checkpoint under an existing name is refused unless ``replace``: then the old row is
    retired under ``NAME@<sha8>`` with its heads, flags and results, so nothing trained or
    measured on the old weights is ever scored against the new ones.
    """
    if not name or len(name) > 200:
        raise InputError(f"model name {name!r} must be 1..200 characters")
    ckpt = None
    if checkpoint_path is not None:
        # absolute, so the model loads from whatever directory the app or a worker runs in
        ckpt = str(Path(checkpoint_path).expanduser().resolve())
        if sha256 is None:
            if not Path(ckpt).is_file():
                raise InputError(f"model {name!r}: checkpoint {ckpt} does not exist")
            sha256 = sha256_file(ckpt)
    if input_size is not None and (len(input_size) != 2 or min(input_size) <= 0):
        raise InputError(f"model {name!r}: input size {input_size} must be (height, width) > 0")
    m = session.scalar(select(Model).where(Model.name == name))
    retired = None
    if m is not None and (m.architecture, m.checkpoint_sha256) != (architecture, sha256):
        if not replace:
            raise InputError(
                f"model {name!r} is already registered ({m.architecture}, checkpoint "
                f"{m.checkpoint_path}, sha256 {(m.checkpoint_sha256 or '-')[:12]}); pass --replace "
                "to register the new checkpoint under this name (the old one keeps its heads, "
                "flags and results under a new name)"
            )
        retired = retire_model(session, m)
        m = None
    if m is None:
        m = Model(name=name, architecture=architecture)
        session.add(m)
    m.architecture = architecture
    m.checkpoint_path, m.checkpoint_sha256 = ckpt, sha256
    m.input_h, m.input_w = (int(input_size[0]), int(input_size[1])) if input_size else (None, None)
    if meta is not None or retired is not None:
        m.meta = {**dict(meta or m.meta or {}), **({"replaces": retired} if retired else {})}
    session.flush()
    return m


def retire_model(session: Session, model: Model) -> str:
    """Rename ``model`` to ``NAME@<sha8>`` (unique) so its name is free; returns the new name."""
    base = f"{model.name[:180]}@{(model.checkpoint_sha256 or 'nockpt')[:8]}"
    new, n = base, 1
    while session.scalar(select(Model.id).where(Model.name == new)) is not None:
        n += 1
        new = f"{base}-{n}"
    model.name = new
    session.flush()
    return new


def get_model(session: Session, name_or_id: str | int) -> Model:
    """A model by name or id; InputError listing the known names otherwise."""
    if isinstance(name_or_id, int):
        m = session.get(Model, name_or_id)
    else:
        m = session.scalar(select(Model).where(Model.name == name_or_id))
    if m is None:
        known = ", ".join(session.scalars(select(Model.name).order_by(Model.name))) or "(none)"
        raise InputError(f"model {name_or_id!r} is not registered; known: {known}")
    return m


def list_models(session: Session) -> list[Model]:
    """All models by name."""
    return list(session.scalars(select(Model).order_by(Model.name)))


def training_images_allowed(session: Session, image_ids: Iterable[int]) -> list[int]:
    """Return ``image_ids`` if none belongs to an eval / heldout dataset; else InputError.

    The trainer calls this on every image it is about to use: a leaderboard that trains on its
    own test set is worthless.
    """
    ids = sorted(set(int(i) for i in image_ids))
    if not ids:
        return []
    rows = session.execute(
        select(Image.id, Image.path, Dataset.name, Dataset.role)
        .join(Dataset, Image.dataset_id == Dataset.id)
        .where(Image.id.in_(ids))
    ).all()
    found = {r.id for r in rows}
    missing = [i for i in ids if i not in found]
    if missing:
        raise InputError(f"training images not registered: ids {missing[:10]}")
    refused = [r for r in rows if r.role in EVAL_ROLES]
    if refused:
        names = ", ".join(f"{r.name}/{r.path}" for r in refused[:5])
        more = f" and {len(refused) - 5} more" if len(refused) > 5 else ""
        raise InputError(
            f"{len(refused)} image(s) belong to evaluation datasets and cannot be used for "
            f"training: {names}{more}"
        )
    return ids
