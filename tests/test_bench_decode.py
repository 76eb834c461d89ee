"""Smoke test of the decode benchmark's --quick mode: it runs and writes the rows it promises
(the timings themselves are benchmarks, never asserted here)."""

import pytest
from conftest import run_bench_json

from infer_fast.data.folders import DECODERS


def test_quick_mode_writes_every_row(tmp_path):
    proc, result = run_bench_json("bench_decode.py", tmp_path / "decode.json", "--quick")
    assert result["settings"]["quick"] and result["settings"]["workers"] == [0, 1]
    image_set = result["image_set"]
    assert image_set["source"] == "generated" and image_set["n"] == 6
    assert image_set["kinds"]["gray"] >= 1 and image_set["kinds"]["cmyk"] == 1 and image_set["kinds"]["png-named-jpeg"] == 1
    assert image_set["groups"]["large"] >= 1

    skipped = [s["decoder"] for s in result["skipped"]]
    decoders = list(DECODERS) + ([] if "torchvision" in skipped else ["torchvision"])
    if skipped:
        assert "skipped torchvision decoder" in proc.stdout
    rows = result["results"]
    speeds = {(r["section"], r["decoder"], r["workers"]): r for r in rows if "images_per_s" in r}
    expected = {("decode", d, w) for d in decoders for w in (0, 1)} | {("decode+forward", d, w) for d in decoders for w in (0, 1)}
    assert set(speeds) == expected | {("forward", "forward only", None)}
    assert all(r["images_per_s"] > 0 and len(r["images_per_s_rounds"]) == 1 for r in speeds.values())
    for (section, d, w), r in speeds.items():  # a ratio beside pillow at the same worker count
        assert (r["ratio_to_pillow"] is None) == (d in ("pillow", "forward only")), (section, d, w)
    assert "pillow-draft / pillow" in proc.stdout

    per_image = {(r["decoder"], r["group"]): r for r in rows if r["section"] == "per-image"}
    groups = set(image_set["groups"]) | {"all"}
    assert set(per_image) == {(d, g) for d in DECODERS for g in groups}
    assert all(per_image[(d, "all")]["images"] == 6 and per_image[(d, "all")]["ms_per_image"] > 0 for d in DECODERS)
    assert sum(per_image[("pillow", g)]["share_of_decode_time"] for g in groups - {"all"}) == pytest.approx(1.0)

    pixels = {r["decoder"]: r for r in rows if r["section"] == "pixels"}
    assert set(pixels) == set(decoders) - {"pillow"}
    draft = pixels["pillow-draft"]
    # at --quick's 64^2 the large images (and 500x500) are drafted: some pixels change, a little
    assert draft["images_changed"] >= 1 and 0 < draft["mean_abs_diff"] < 3
    assert "pixels of pillow-draft vs pillow" in proc.stdout and "forward only" in proc.stdout
