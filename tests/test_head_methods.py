"""anomseg.head_methods: every ``head:`` spelling read in one place, resolved through an
injected lookup, and scored exactly as the head itself scores."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from anomseg import scoring
from anomseg.errors import CheckpointError, InputError
from anomseg.head_methods import (
    HeadRef,
    HeadScorers,
    file_lookup,
    head_method,
    head_suffix,
    head_version,
    is_head_method,
    require_version,
    resolve_head_methods,
)
from anomseg.models.heads import FeatureHead, StatsHead, head_scorer, save_head
from anomseg.prediction import Prediction


@pytest.mark.parametrize(
    "method, suffix, version",
    [("head:3", "3", 3), (" head: 12 ", "12", 12), ("head:v3", "v3", 3),
     ("head:/x/h.safetensors", "/x/h.safetensors", None), ("head:latest", "latest", None),
     ("msp", None, None), ("msp:T=2.0", None, None), ("heads:1", None, None),
     ("energy:T=0.5", None, None)],
)  # fmt: skip
def test_spellings(method, suffix, version):
    assert head_suffix(method) == suffix
    assert is_head_method(method) == (suffix is not None)
    assert head_version(method) == version
    if version is not None:
        assert require_version(method) == version and head_method(version) == f"head:{version}"
    else:
        with pytest.raises(InputError, match="expected head:N"):
            require_version(method)


@pytest.fixture
def heads_on_disk(tmp_path):
    torch.manual_seed(3)
    stats = StatsHead().eval()
    save_head(stats, tmp_path / "v1.safetensors", model="m", version=1, model_sha256="a" * 64)
    feat = FeatureHead(feat_dim=4).eval()
    save_head(feat, tmp_path / "v2.safetensors", model="m", version=2)
    return tmp_path, stats


def test_resolution_through_a_store_lookup_scores_like_the_head(heads_on_disk):
    root, stats = heads_on_disk
    asked = []

    def lookup(suffix):
        asked.append(suffix)
        return HeadRef(root / f"v{suffix.lstrip('v')}.safetensors", owner="m")

    heads = HeadScorers(lookup)
    specs = heads.specs(["msp", "head:1", " head:2", "maxlogit"])
    assert list(specs) == ["head:1", "head:2"] and asked == ["1", "2"]
    assert specs["head:1"].label == "head:1 (stats, m)"
    assert specs["head:2"].needs == frozenset({"logits", "features"})
    pred = Prediction(logits=torch.randn(20, 7, 9))
    np.testing.assert_allclose(
        scoring.score("head:1", pred, extra=specs), head_scorer(stats)(pred), atol=1e-7
    )
    assert heads.spec("head:1") is specs["head:1"]  # loaded once per file


def test_a_rewritten_file_is_read_again(heads_on_disk):
    root, _ = heads_on_disk
    heads = HeadScorers(lambda s: HeadRef(root / "v1.safetensors"))
    first = heads.spec("head:1")
    torch.manual_seed(99)
    other = StatsHead().eval()
    save_head(other, root / "v1.safetensors", model="m", version=1)
    st = os.stat(root / "v1.safetensors")
    os.utime(root / "v1.safetensors", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    second = heads.spec("head:1")
    assert second is not first
    pred = Prediction(logits=torch.randn(20, 5, 6))
    np.testing.assert_allclose(second.fn(pred), head_scorer(other)(pred), atol=1e-7)


def test_checks_and_errors(heads_on_disk):
    root, _ = heads_on_disk
    path = str(root / "v1.safetensors")
    ok = resolve_head_methods([f"head:{path}"], file_lookup(model_sha256="a" * 64))
    assert list(ok) == [f"head:{path}"]
    with pytest.raises(InputError, match="was trained for the checkpoint"):
        resolve_head_methods([f"head:{path}"], file_lookup(model_sha256="b" * 64))
    with pytest.raises(InputError, match="expected head:FILE"):
        resolve_head_methods(["head:1"], file_lookup())
    with pytest.raises(InputError, match="not found"):
        resolve_head_methods(["head:9"], lambda s: HeadRef(root / "v9.safetensors"))
    with pytest.raises(CheckpointError, match="'features' head was expected"):
        resolve_head_methods(
            ["head:1"], lambda s: HeadRef(root / "v1.safetensors", kind="features")
        )
    with pytest.raises(InputError, match="expected head:N"):
        HeadScorers(lambda s: HeadRef(root / "v1.safetensors")).spec("head:latest")
    with pytest.raises(InputError, match="no store"):
        HeadScorers().spec("head:1")
