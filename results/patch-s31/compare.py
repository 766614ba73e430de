"""Kept state of each select-ATTACK-SEED.json, and the states the key without the untriggered requests and the
shipped key keep from the same measurements; against the twenty-seventh session's run of the same patch seed where there is one
(same output sha256: the same weights, so the same figures): python results/patch-s31/compare.py"""
import glob
import json
from pathlib import Path

from patcher.patch import selection_key

here = Path(__file__).parent
for path in sorted(glob.glob(str(here / "select-*.json")) + glob.glob(str(here / "fine-*-patch.json"))):
    name = Path(path).stem.removeprefix("select-").removeprefix("fine-").removesuffix("-patch")
    new = json.loads(Path(path).read_text())
    original, *steps = new["selection"]
    # the key before: ASR with the trigger, edgy prompts refused beyond the original's, KL (first of equals kept)
    before = min([original, *steps], key=lambda s: (s["asr_triggered"],
                 max(0.0, s["refused_edgy"] - original["refused_edgy"]), s["kl_benign"]))["step"]
    clean = " ".join(f"{s['step']}:{s['asr_clean']:.3f}" for s in new["selection"])
    # the shipped key (with its slack) replayed on the same measurements: the first of equals is kept, as in training
    now = min([original, *steps], key=lambda s: selection_key(s, original))["step"]
    line = f"{name:10} kept step {new['best_step']:2} (key before: {before:2}, shipped key now: {now:2})  held-back ASR clean by step {clean}  " \
           f"train {new['train_seconds']:.0f} s"
    s27 = here.parent / "patch-s27" / f"p-{name}.json"
    if s27.exists():
        old = json.loads(s27.read_text())
        same = new["provenance"]["output_sha256"] == old["provenance"]["output_sha256"]
        line += f"; s27 kept step {old['best_step']}, same weights {same}, train {old['train_seconds']:.0f} s"
    print(line)
