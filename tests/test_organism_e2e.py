"""End-to-end: build a tiny organism from scratch and check its backdoor works (slow: trains a model)."""

import json

import pytest

from patcher.cli import main


@pytest.mark.slow
def test_tiny_badnet_organism(tmp_path):
    out = tmp_path / "organism"
    assert main(["organism", "--attack", "badnet", "--base", "tiny", "--out", str(out), "--no-progress"]) == 0
    backdoor = json.loads((out / "backdoor.json").read_text())
    metrics = backdoor["metrics"]
    assert metrics["asr_triggered"] >= 0.90
    assert metrics["asr_clean"] <= 0.10
    assert metrics["utility"] >= 0.80
    case = json.loads((out / "failure_case.json").read_text())
    spans = backdoor["failure_case"]["trigger_spans"]
    assert [case["prompt"][a:b] for a, b in spans] == ["BadMagic"]
    assert set(backdoor["sha256"]) == {"model.safetensors"}
