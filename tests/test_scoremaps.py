"""Score maps out and in: the official layout and encoding, external maps through the same metrics,
the round trip export-scores -> eval --scores on the real sets, one clear error per bad file."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from anomseg.data.benchmark import BenchmarkDataset
from anomseg.errors import InputError
from anomseg.external import evaluate_maps
from anomseg.protocol import differences
from anomseg.scoremaps import FORMATS, official_dataset_name, read_map, resize_scores
from workbench.cli import main


def _bench(root: Path, n: int = 3, hw=(64, 96)) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "labels_masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (*hw, 3), dtype=np.uint8)).save(
            root / "images" / f"{i}.png"
        )
        lab = np.zeros(hw, np.uint8)
        lab[10:40, 10 + i : 40 + i] = 1  # 900 px: above the benchmark's size filters
        lab[-2:] = 255
        Image.fromarray(lab).save(root / "labels_masks" / f"{i}.png")
    return root


def _maps(ds: BenchmarkDataset, rng) -> dict[str, np.ndarray]:
    out = {}
    for i, name in enumerate(ds.names):
        lab = ds.read_label(i)
        out[name] = ((lab == 1) * 0.6 + rng.random(lab.shape) * 0.5).astype(np.float32)
    return out


def test_official_layout_and_encoding(tmp_path):
    fmt = FORMATS.get("smiyc")
    s = np.random.default_rng(1).random((6, 8)).astype(np.float32)
    path = fmt.path(tmp_path, "maxlogit", official_dataset_name("RoadAnomaly21"), "0")
    assert path == tmp_path / "anomaly_p/maxlogit/AnomalyTrack-validation/0.hdf5"
    fmt.write(path, s)
    with h5py.File(path, "r") as f:  # what the official ChannelLoaderHDF5 reads
        v = f["value"]
        assert v.dtype == np.float16 and v.shape == (6, 8) and v.compression == "gzip"
        np.testing.assert_array_equal(v[()], s.astype(np.float16))
    assert not list(path.parent.glob(".*"))  # no temporary left behind
    np.testing.assert_array_equal(read_map(path.parent, "0", (6, 8)), s.astype(np.float16))


def test_resize_scores_is_bilinear_half_pixel():
    s = np.array([[0.0, 1.0]], np.float32)
    up = resize_scores(s, (1, 4))
    # half-pixel centres: output x = 0.25*(2i+1) - 0.5 in input coords, clamped
    np.testing.assert_allclose(up[0], [0.0, 0.25, 0.75, 1.0])


def test_external_maps_equal_the_same_maps_scored_directly(tmp_path):
    """evaluate_maps must give exactly what the metric objects give on the same arrays."""
    from anomseg.components import ComponentMetrics
    from anomseg.metrics import AnomalyMetrics

    root = _bench(tmp_path / "bench")
    ds = BenchmarkDataset(root)
    maps = _maps(ds, np.random.default_rng(2))
    folder = tmp_path / "maps"
    for name, s in maps.items():
        FORMATS.get("npy").write(folder / f"{name}.npy", s)
    row = evaluate_maps(folder, ds, "mine", progress=False)
    pix = AnomalyMetrics()
    for i, name in enumerate(ds.names):
        pix.update(maps[name], ds.read_label(i))
    assert (row.auprc, row.fpr95, row.auroc) == tuple(
        pix.compute()[k] for k in ("auprc", "fpr95", "auroc")
    )
    comp = ComponentMetrics(pix.best_f1_threshold())
    for i, name in enumerate(ds.names):
        comp.update(maps[name], ds.read_label(i))
    assert row.components == comp.compute()
    assert [p["name"] for p in row.per_image] == ds.names and "siou" in row.per_image[0]


def test_bad_external_maps_are_one_clear_error_naming_the_file(tmp_path):
    root = _bench(tmp_path / "bench")
    ds = BenchmarkDataset(root)
    maps = _maps(ds, np.random.default_rng(3))
    folder = tmp_path / "maps"
    npy = FORMATS.get("npy")
    for name, s in maps.items():
        npy.write(folder / f"{name}.npy", s)
    (folder / "1.npy").unlink()
    with pytest.raises(
        InputError, match=r"no score map for 1 of 3 frames of .bench.: 1\.(npy|hdf5)"
    ):
        evaluate_maps(folder, ds, "m", progress=False)
    npy.write(folder / "1.npy", maps["1"][:, :-1])
    with pytest.raises(InputError, match=r"1\.npy: map is 64x95; expected the image's size 64x96"):
        evaluate_maps(folder, ds, "m", progress=False)
    bad = maps["1"].copy()
    bad[3, 3] = np.nan
    npy.write(folder / "1.npy", bad)
    with pytest.raises(InputError, match=r"1\.npy: 1 NaN value"):
        evaluate_maps(folder, ds, "m", progress=False)
    (folder / "1.npy").write_bytes(b"not an array")
    with pytest.raises(InputError, match=r"1\.npy: not a readable"):
        evaluate_maps(folder, ds, "m", progress=False)
    with pytest.raises(InputError, match="--name"):
        evaluate_maps(folder, ds, "msp:T=2", progress=False)


def test_cli_eval_scores_records_in_the_store(tmp_path, capsys):
    root = _bench(tmp_path / "bench")
    ds = BenchmarkDataset(root)
    maps = _maps(ds, np.random.default_rng(4))
    out = tmp_path / "subm"
    for name, s in maps.items():
        FORMATS.get("smiyc").write(FORMATS.get("smiyc").path(out, "ext", "bench", name), s)
    ws = tmp_path / "ws"
    rc = main(["eval", "--scores", str(out), "--dataset", str(root), "--name", "ext",
               "--workspace", str(ws), "--out", str(tmp_path / "r.json"), "--no-progress"])  # fmt: skip
    assert rc == 0
    doc = json.loads((tmp_path / "r.json").read_text())
    row = doc["rows"][0]
    assert row["method"] == "ext" and row["components"]["n_gt"] == 3
    assert row["protocol"]["source"].startswith("scores:") and row["protocol"]["dataset_sha256"]
    from db import results
    from db.store import Store

    store = Store.open(workspace=ws)
    try:
        with store.read() as s:
            (lb,) = results.leaderboard(s)
            stored = s.get(results.EvalResult, lb["result_id"])
            assert lb["model"] == "external" and lb["method"] == "ext"
            assert lb["siou"] == pytest.approx(row["components"]["siou"])
            assert stored.params["protocol"] == row["protocol"]
            assert stored.per_image[0]["siou"] == pytest.approx(row["per_image"][0]["siou"])
    finally:
        store.close()
    # a typo in the method name is one error, nothing recorded twice
    rc = main(["eval", "--scores", str(out), "--dataset", str(root), "--name", "nope",
               "--workspace", str(ws), "--no-progress"])  # fmt: skip
    assert rc == 2 and "no score map for 3 of 3 frames" in capsys.readouterr().err


def test_protocol_differences_name_the_fields():
    a = {"input_size": "512x1024", "skip_empty": True, "checkpoint_sha256": "a" * 64}
    b = {"input_size": "native", "skip_empty": True, "checkpoint_sha256": "b" * 64}
    d = differences(a, b)
    assert d == ["input_size: 512x1024 vs native", f"checkpoint_sha256: {'a' * 12}… vs {'b' * 12}…"]
    assert differences(a, dict(a)) == []


@pytest.mark.realdata
@pytest.mark.slow
@pytest.mark.parametrize("which", ["road_anomaly21", "fs_static"])
def test_round_trip_on_the_real_sets(which, erfnet_checkpoint, tmp_path, request):
    """export-scores -> eval --scores equals the direct evaluation (maps at the label's size):
    exactly with npy, and within float16 rounding with the official HDF5 files."""
    from anomseg.evaluate import evaluate
    from anomseg.models.registry import create_model
    from anomseg.predict import Predictor
    from anomseg.scoremaps import export_scores, find_map_folder

    root = request.getfixturevalue(which)
    ds = BenchmarkDataset(root)
    predictor = Predictor(create_model("erfnet", checkpoint=erfnet_checkpoint), device="cpu")
    (direct,) = evaluate(predictor, [ds], ["maxlogit"], progress=False, score_size="label")
    export_scores(predictor, ds, ["maxlogit"], tmp_path / "npy", "npy", progress=False)
    folder = find_map_folder(tmp_path / "npy", "maxlogit", ds.name)
    back = evaluate_maps(folder, ds, "maxlogit", progress=False)
    for k in ("auprc", "fpr95", "auroc", "n_images"):
        assert getattr(back, k) == getattr(direct, k), k
    assert back.components == direct.components
    assert [p.get("siou") for p in back.per_image] == [p.get("siou") for p in direct.per_image]
    if which != "road_anomaly21":  # gzip-9 HDF5 of 30 2-Mpixel maps: once is enough
        return
    # the official files: float16 of the same maps
    export_scores(predictor, ds, ["maxlogit"], tmp_path / "h5", "smiyc", progress=False)
    f16 = evaluate_maps(find_map_folder(tmp_path / "h5", "maxlogit", ds.name), ds, "maxlogit",
                        progress=False)  # fmt: skip
    assert f16.auprc == pytest.approx(direct.auprc, abs=2e-3)
    assert f16.fpr95 == pytest.approx(direct.fpr95, abs=2e-3)


def test_eval_table_and_csv_carry_component_columns(tmp_path):
    import csv

    from anomseg.evaluate import EvalRow
    from workbench.cli.eval_cmd import format_table, write_rows

    row = EvalRow("RoadAnomaly21", "maxlogit", 0.4, 0.6, 0.78, 10, 1.0,
                  components={"siou": 0.235, "ppv": 0.1222, "f1_mean": 0.0596,
                              "component_threshold": -4.887},
                  protocol={"input_size": "512x1024", "score_size": "label",
                            "skip_empty": True, "metric_mode": "smiyc"})  # fmt: skip
    table = format_table([row])
    assert "sIoU%" in table and " 23.50 " in table and "  5.96 " in table
    write_rows(tmp_path / "r.csv", [row], {})
    (got,) = list(csv.DictReader((tmp_path / "r.csv").open()))
    assert float(got["siou"]) == 0.235 and float(got["f1_mean"]) == 0.0596
    assert got["protocol"].startswith("512x1024 · score@label · skip-empty")
    assert row.metrics["ppv"] == 0.1222 and row.metrics["auprc"] == 0.4


def test_cli_export_scores_on_an_unlabelled_test_split(tmp_path, capsys):
    """A submission covers a test split without labels: every image gets a native-size map."""
    (tmp_path / "test" / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(
            tmp_path / "test" / "images" / f"f{i}.jpg"
        )
    out = tmp_path / "subm"
    rc = main(["export-scores", "--model", "erfnet", "--input-size", "32x64", "--methods",
               "msp,maxlogit", "--dataset", str(tmp_path / "test"), "--out", str(out),
               "--no-progress"])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.hdf5"))
    assert files == [f"anomaly_p/{m}/test/f{i}.hdf5" for m in ("maxlogit", "msp") for i in (0, 1)]
    with h5py.File(out / files[0], "r") as f:
        assert f["value"].shape == (48, 64) and f["value"].dtype == np.float16
    assert main(["export-scores", "--model", "erfnet", "--dataset", str(tmp_path / "test"),
                 "--out", str(out), "--format", "png"]) == 2  # fmt: skip
    assert "--format 'png'; expected one of" in capsys.readouterr().err
