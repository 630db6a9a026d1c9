import json
import sys
import time

import pytest

from nd3d_jax import benchmark
from nd3d_jax.benchmark import BenchOptions, Record, markdown_table, measure

FAKE_SUITE = """
from nd3d_jax.benchmark import Record, device_name, measure

def suite(opts):
    t = measure(lambda: sum(range(1000)), warmup=opts.warmup, repeats=opts.repeats)
    return [Record("fake", device_name(), "1000", t, opts.repeats, 1000 / t, "items/s",
                   "reference impl", 2 * t)]
"""


def test_measure_takes_the_median():
    calls = []

    def fn():
        calls.append(1)
        time.sleep(0.01)

    t = measure(fn, warmup=2, repeats=3)
    assert len(calls) == 5 and t >= 0.01


def test_ratio_and_table():
    r = Record("x", "cpu", "4x4", 0.002, 3, reference="ref", reference_median_s=0.004)
    assert r.ratio == pytest.approx(0.5)
    assert Record("y", "cpu", "s", 1.0, 1).ratio is None
    table = markdown_table([r])
    assert table.splitlines()[0].startswith("| name | device |")
    assert "| x | cpu | 4x4 | 2 |" in table and "| 0.5 |" in table


def test_cli_writes_json(tmp_path, monkeypatch, capsys):
    (tmp_path / "fake_suite.py").write_text(FAKE_SUITE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(benchmark.SUITES, "fake", "fake_suite")
    out = tmp_path / "res" / "b.json"
    try:
        benchmark.main(["fake", f"--out={out}", "--repeats=2"])
    finally:
        sys.modules.pop("fake_suite", None)
    records = json.loads(out.read_text())
    assert records[0]["name"] == "fake" and records[0]["ratio"] == pytest.approx(0.5)
    assert {"name", "device", "median_s", "reference", "reference_median_s"} <= set(records[0])
    assert "| fake |" in capsys.readouterr().out


def test_unknown_suite(capsys):
    with pytest.raises(SystemExit):
        benchmark.main(["nope"])
    assert "unknown benchmark" in capsys.readouterr().err


def test_geometry_suite_quick():
    records = benchmark.run_suites(["geometry"], BenchOptions(quick=True, repeats=1, warmup=1))
    names = [r.name for r in records]
    assert names == [
        "marching_tets_R16",
        "marching_tets_R32",
        "refine_fit_50_steps",
        "refine_grid_query_R16",
    ]
    for r in records:
        assert r.median_s > 0 and r.throughput > 0
    assert all(r.reference_median_s > 0 and r.ratio > 0 for r in records[:2])


def test_data_suite_quick():
    records = benchmark.run_suites(["data"], BenchOptions(quick=True, repeats=2, warmup=0))
    signs, *loader, omni = records
    assert signs.name.startswith("sdf_signs_") and "exact" in signs.reference and signs.ratio > 0
    assert "signs equal exact: True" in signs.shape
    assert [r.name for r in loader] == ["loader_pix3d_tiny_1thread", "loader_pix3d_tiny_2thread"]
    assert all(r.throughput > 0 and r.throughput_unit == "examples/s" for r in loader)
    assert loader[1].reference_median_s == loader[0].median_s and loader[1].ratio > 0
    # OmniObject3D at (here: tiny) real sizes, per object and projected to the full set
    assert omni.name == "prepare_omniobject3d_tiny_1core" and omni.throughput_unit == "objects/s"
    assert "6 renders x 48 px" in omni.shape and "6,000 objects:" in omni.shape
    assert 1000 <= int(omni.shape.split(" faces")[0].split()[-1]) <= 4000  # ~2k-face scan


def test_encoders_suite_quick():
    records = benchmark.run_suites(["encoders"], BenchOptions(quick=True, repeats=1, warmup=1))
    assert [r.name for r in records] == ["clip_text_tiny", "clip_image_tiny", "priors_fusion_tiny"]
    for r in records:
        assert r.median_s > 0 and r.reference_median_s > 0 and r.ratio > 0
        assert "torch" in r.reference


def test_diffusion_suite_quick():
    records = benchmark.run_suites(["diffusion"], BenchOptions(quick=True, repeats=1, warmup=1))
    assert [r.name for r in records] == ["unet_forward_tiny", "unet_forward_backward_tiny"]
    fwd = records[0]
    assert fwd.reference_median_s > 0 and fwd.ratio > 0
    # the hand count covers the matmuls and convolutions XLA also counts
    assert 0.8 < fwd.analytic_flops / fwd.xla_flops <= 1.0
    assert "| GFLOP xla / analytic |" in benchmark.markdown_table(records).splitlines()[0]


def test_train_suite_quick():
    records = benchmark.run_suites(["train"], BenchOptions(quick=True, repeats=1, warmup=1))
    assert [r.name for r in records] == ["train_step_demo_tiny"]
    assert records[0].median_s > 0 and records[0].throughput_unit == "examples/s"
    assert "MFU n/a" in records[0].shape  # no peak FLOP/s known for CPUs


def test_prior_suite_quick():
    records = benchmark.run_suites(["prior"], BenchOptions(quick=True, repeats=1, warmup=1))
    assert [r.name for r in records] == [
        "shap_e_img2img_sample_tiny",
        "shap_e_field_query_R32_torch_chunk4096",
        "shap_e_field_query_R32_torch_chunk65536",
    ]
    for r in records:
        assert r.median_s > 0 and r.reference_median_s > 0 and r.ratio > 0 and r.throughput > 0
        assert "torch" in r.reference
    # each record names its parity check: ours equals diffusers on the timed inputs
    sample_diff = float(records[0].shape.split("max|ours-ref| ")[1])
    assert sample_diff < 1e-4 and records[0].throughput_unit == "objects/s"
    sdf, rgb = records[1].shape.split("max|ours-ref| sdf ")[1].split(" rgb ")
    assert float(sdf) < 1e-3 and float(rgb) < 1e-4 and records[1].throughput_unit == "points/s"
    assert records[1].median_s == records[2].median_s  # one timing of ours, two references
