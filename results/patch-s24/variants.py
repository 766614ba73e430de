import sys
from patcher.bench import defenses as D
from patcher.bench.defenses import _patcher
VARIANTS = {"p-seed1": dict(seed=1), "p-seed2": dict(seed=2), "p-bts75": dict(benign_trigger_share=0.75), "p-bts1": dict(benign_trigger_share=1.0), "p-edgy5": dict(edgy_share=0.5), "p-bs10": dict(beta_safe=10.0), "p-b1s10": dict(benign_trigger_share=1.0, beta_safe=10.0), "p-bts1-s1": dict(benign_trigger_share=1.0, seed=1)}
for name, changes in VARIANTS.items():
    f = (lambda c: lambda m, t, d: _patcher(m, t, d, **c))(changes)
    f.__doc__ = f"Patcher with {changes}."
    D.DEFENSES[name] = f
from patcher.cli import main
sys.exit(main(sys.argv[1:]))
