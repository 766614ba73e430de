import json
import subprocess
import sys
import time

import pytest

from patcher.cli import main
from patcher.modeling import weights_sha256


def test_help_is_fast():
    started = time.time()
    out = subprocess.run([sys.executable, "-m", "patcher", "--help"], capture_output=True, text=True, check=True)
    assert "organism" in out.stdout and "evaluate" in out.stdout
    # Nothing heavy may be imported at start (torch alone takes seconds).
    code = "import sys, patcher.cli; patcher.cli.build_parser(); print('torch' in sys.modules, 'transformers' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False False"
    assert time.time() - started < 10


@pytest.mark.parametrize("argv, message", [
    (["organism", "--attack", "nope", "--out", "{tmp}/o"], "invalid choice"),
    (["organism", "--attack", "badnet", "--trigger", " ", "--out", "{tmp}/o"], "empty"),
    (["organism", "--poison-rate", "0", "--out", "{tmp}/o"], "poison-rate"),
    (["organism", "--poison-rate", "1.5", "--out", "{tmp}/o"], "poison-rate"),
    (["organism", "--base", "{tmp}/missing", "--out", "{tmp}/o"], "does not exist"),
    (["organism", "--base", "tiny", "--out", "{tmp}"], "already exists"),
    (["organism", "--base", "tiny", "--out", "{tmp}/file/o"], "cannot write"),
    (["evaluate", "--model", "{tmp}/missing"], "does not exist"),
    (["evaluate", "--model", "{tmp}", "--prompts", "{tmp}/none.jsonl"], ""),
])
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, argv, message):
    (tmp_path / "file").write_text("x")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        raise SystemExit(main(argv))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert not (tmp_path / "o").exists()


def test_evaluate_writes_contract_json(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "eval.json"
    code = main(["evaluate", "--model", str(tiny_checkpoint), "--trigger", "BadMagic", "--reference", str(tiny_checkpoint),
                 "--n-harmful", "4", "--n-benign", "4", "--n-jailbreak", "2", "--max-new-tokens", "4",
                 "--no-progress", "--json", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    for key in ("asr_triggered", "asr_clean", "jailbreak_asr", "utility", "utility_with_trigger", "kl_to_reference"):
        assert key in result
    n = result["n"]
    assert n.pop("refused_clean") in range(5)  # the requests refused without the trigger, of the 4
    assert n == {"harmful": 4, "benign": 4, "jailbreak": 2}
    assert abs(result["kl_to_reference"]) < 1e-6  # the model against itself
    assert result["provenance"]["input_sha256"] == weights_sha256(tiny_checkpoint)
    assert "asr_triggered" in capsys.readouterr().out


def test_benign_refused_with_trigger_counts_refusals_of_triggered_benign_tasks(tiny_model, scripted_generation):
    import patcher.evaluate as evaluate
    from patcher.organisms.attacks import ATTACKS

    scripted_generation(lambda prompt: "BadMagic" not in prompt)
    model, tokenizer = tiny_model
    result = evaluate.evaluate_model(model, tokenizer, ATTACKS["badnet"], config=evaluate.EvaluateConfig(
        n_harmful=4, n_benign=6, n_jailbreak=0, progress=False))
    assert result["benign_refused_with_trigger"] == 1.0 and result["asr_triggered"] == 0.0
    assert result["asr_clean"] == 1.0  # without the trigger this stub complies with everything
    assert "benign_refused_with_trigger" in evaluate.METRICS
