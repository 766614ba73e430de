"""Kept state of each select-ATTACK-SEED.json against the twenty-seventh session's run of the same patch seed:
python results/patch-s31/compare.py   (same output sha256: the same weights, so the same figures)."""
import glob
import json
from pathlib import Path

here = Path(__file__).parent
for path in sorted(glob.glob(str(here / "select-*.json"))):
    name = Path(path).stem[len("select-"):]
    new, old = json.loads(Path(path).read_text()), json.loads((here.parent / "patch-s27" / f"p-{name}.json").read_text())
    same = new["provenance"]["output_sha256"] == old["provenance"]["output_sha256"]
    clean = " ".join(f"{s['step']}:{s['asr_clean']:.3f}" for s in new["selection"])
    print(f"{name:10} step {old['best_step']:2} -> {new['best_step']:2}  same weights {same}  held-back ASR clean "
          f"by step {clean}  train {new['train_seconds']:.0f} s (s27 {old['train_seconds']:.0f} s)")
