"""Checkpoint loading is strict, all-or-nothing and safe; saving is atomic."""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import pytest
import torch

from anomseg.errors import CheckpointError
from anomseg.models import create_model, file_sha256, load_checkpoint, save_checkpoint
from anomseg.models.checkpoints import read_checkpoint


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_unchanged(model, before):
    after = model.state_dict()
    assert after.keys() == before.keys()
    for k, v in before.items():
        assert torch.equal(after[k], v), f"{k} was modified"


@pytest.fixture()
def erfnet():
    torch.manual_seed(0)
    return create_model("erfnet")


def erfnet_state(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return create_model("erfnet").state_dict()


def test_eomt_state_into_erfnet_lists_keys_and_loads_nothing(erfnet, tmp_path):
    torch.manual_seed(1)
    eomt = create_model("eomt_tiny", img_size=(32, 64), num_q=4)
    path = tmp_path / "eomt.pth"
    torch.save({f"network.{k}": v for k, v in eomt.state_dict().items()}, path)
    before = snapshot(erfnet)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(erfnet, path)
    msg = str(err.value)
    assert str(path) in msg and "'erfnet'" in msg
    assert "missing keys (345): decoder.layers.0.bn.bias" in msg
    assert f"unexpected keys ({len(eomt.state_dict())})" in msg and "attn_mask_probs" in msg
    assert "more" in msg and len(msg) < 2000  # long lists are truncated
    assert_unchanged(erfnet, before)


def test_one_renamed_key_fails_and_loads_nothing(erfnet, tmp_path):
    state = {f"module.{k}": v for k, v in erfnet_state(5).items()}
    state["module.decoder.output_conv.weigth"] = state.pop("module.decoder.output_conv.weight")
    path = tmp_path / "renamed.pth"
    torch.save(state, path)
    before = snapshot(erfnet)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(erfnet, path)
    msg = str(err.value)
    assert "missing keys (1): decoder.output_conv.weight" in msg
    assert "unexpected keys (1): decoder.output_conv.weigth" in msg
    assert_unchanged(erfnet, before)


def test_shape_mismatch_is_named(erfnet, tmp_path):
    torch.manual_seed(2)
    path = tmp_path / "21.pth"
    torch.save(create_model("erfnet", num_outputs=21).state_dict(), path)
    before = snapshot(erfnet)
    with pytest.raises(CheckpointError, match=r"decoder.output_conv.weight \(16, 21, 2, 2\)"):
        load_checkpoint(erfnet, path)
    assert_unchanged(erfnet, before)


@pytest.mark.parametrize("container", ["state_dict", "model"])
def test_training_containers_are_unwrapped(erfnet, tmp_path, container):
    state = erfnet_state(7)
    path = tmp_path / "ckpt.pt"
    torch.save({container: {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, path)
    load_checkpoint(erfnet, path)
    assert_unchanged(erfnet, state)


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_code_executing_pickle_is_refused(erfnet, tmp_path, fmt):
    marker = tmp_path / "PWNED"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    payload = {"encoder.initial_block.conv.weight": Evil()}
    path = tmp_path / "evil.pth"
    if fmt == "zip":
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f)
    before = snapshot(erfnet)
    with pytest.raises(CheckpointError, match="refused: .*not a plain tensor state dict") as err:
        load_checkpoint(erfnet, path)
    assert str(path) in str(err.value)
    assert not marker.exists()
    assert_unchanged(erfnet, before)
    if fmt == "legacy":  # the payload is real: an unsafe load would have created the file
        with open(path, "rb") as f:
            pickle.load(f).popitem()[1].close()
        assert marker.exists()


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
@pytest.mark.parametrize("keep", [0.5, 0.99, 0.0])
def test_truncated_file_is_named(erfnet, tmp_path, suffix, keep):
    full = tmp_path / f"full{suffix}"
    if suffix == ".pth":
        torch.save(erfnet_state(3), full)
    else:
        save_checkpoint(erfnet_state(3), full, {})
    data = full.read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(data[: int(len(data) * keep)])
    before = snapshot(erfnet)
    with pytest.raises(CheckpointError, match="truncated or corrupt") as err:
        load_checkpoint(erfnet, cut)
    assert str(cut) in str(err.value)
    assert_unchanged(erfnet, before)


def test_missing_and_unknown_files(erfnet, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(erfnet, tmp_path / "nope.pth")
    odd = tmp_path / "weights.npz"
    odd.write_bytes(b"x")
    with pytest.raises(CheckpointError, match="unknown checkpoint type"):
        load_checkpoint(erfnet, odd)
    notdict = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], notdict)
    with pytest.raises(CheckpointError, match="expected a tensor state dict"):
        load_checkpoint(erfnet, notdict)


def test_safetensors_round_trip_with_metadata_and_sha(erfnet, tmp_path):
    path = tmp_path / "sub" / "erfnet_v1.safetensors"
    meta = {"arch": "erfnet", "epochs": 3, "note": "round trip"}
    assert save_checkpoint(erfnet, path, meta) == path
    assert json.loads((tmp_path / "sub" / "erfnet_v1.json").read_text()) == meta
    assert file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    assert sorted(p.name for p in path.parent.iterdir()) == ["erfnet_v1.json", path.name]

    torch.manual_seed(9)
    other = create_model("erfnet")
    assert load_checkpoint(other, path) == meta
    assert_unchanged(other, erfnet.state_dict())


def test_fp16_save_halves_floats_and_loads_into_fp32(erfnet, tmp_path):
    path = save_checkpoint(erfnet, tmp_path / "half.safetensors", {}, fp16=True)
    state, _ = read_checkpoint(path)
    assert state["decoder.output_conv.weight"].dtype == torch.float16
    assert state["encoder.initial_block.bn.num_batches_tracked"].dtype == torch.int64
    other = create_model("erfnet")
    load_checkpoint(other, path)
    w = other.decoder.output_conv.weight
    assert w.dtype == torch.float32
    torch.testing.assert_close(w, erfnet.decoder.output_conv.weight, atol=1e-3, rtol=1e-3)


def test_save_is_atomic_on_failure(erfnet, tmp_path, monkeypatch):
    path = tmp_path / "head.safetensors"
    save_checkpoint(erfnet, path, {"version": 1})
    old = path.read_bytes()

    with pytest.raises(CheckpointError, match="JSON"):
        save_checkpoint(erfnet, path, {"bad": object()})

    import safetensors.torch

    def broken(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half-written")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(erfnet, path, {"version": 2})
    assert path.read_bytes() == old
    assert json.loads((tmp_path / "head.json").read_text()) == {"version": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["head.json", "head.safetensors"]


def test_meta_built_model_is_materialised_from_file(erfnet, tmp_path):
    path = save_checkpoint(erfnet, tmp_path / "e.safetensors", {})
    with torch.device("meta"):
        model = create_model("erfnet")
    load_checkpoint(model, path)
    assert_unchanged(model, erfnet.state_dict())


def _eomt_lightning_ckpt(tmp_path, drop: str | None = None):
    torch.manual_seed(1)
    src = create_model("eomt_tiny", img_size=(32, 64), num_q=4)
    state = {f"network.{k}": v for k, v in src.state_dict().items() if k != drop}
    state["criterion.empty_weight"] = torch.ones(20)
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": state, "epoch": 1, "global_step": 10}, path)
    return src, path


def test_lightning_ckpt_loads_without_its_criterion_buffer(tmp_path):
    src, path = _eomt_lightning_ckpt(tmp_path)
    torch.manual_seed(2)
    dst = create_model("eomt_tiny", img_size=(32, 64), num_q=4)
    load_checkpoint(dst, path)
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v), k


def test_lightning_ckpt_missing_a_network_key_still_fails_strictly(tmp_path):
    _, path = _eomt_lightning_ckpt(tmp_path, drop="mask_head.2.bias")
    torch.manual_seed(2)
    dst = create_model("eomt_tiny", img_size=(32, 64), num_q=4)
    before = snapshot(dst)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(dst, path)
    msg = str(err.value)
    assert "missing keys (1): mask_head.2.bias" in msg and "criterion" not in msg
    assert_unchanged(dst, before)


def test_lightning_ckpt_into_erfnet_lists_the_network_keys(erfnet, tmp_path):
    src, path = _eomt_lightning_ckpt(tmp_path)
    before = snapshot(erfnet)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(erfnet, path)
    msg = str(err.value)
    assert f"unexpected keys ({len(src.state_dict())}): attn_mask_probs" in msg
    assert "missing keys (345)" in msg
    assert_unchanged(erfnet, before)
