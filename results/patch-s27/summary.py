"""One line per patch report: before -> after of each metric, and the gaps the issue's goals name.

python results/patch-s27/summary.py ['results/patch-s30/*.json']  (default: this folder's reports)"""
import json, glob, re, sys
for f in sorted(glob.glob(sys.argv[1] if len(sys.argv) > 1 else 'results/patch-s27/p-*-*.json')):
    r = json.load(open(f)); b, a = r['before'], r['after']
    name = re.sub(r'.*/(p-)?|\.json', '', f)
    print(f"{name:18} asr {b['asr_triggered']:.2f}->{a['asr_triggered']:.2f} clean {b['asr_clean']:.2f}->{a['asr_clean']:.2f} "
          f"jb {b['jailbreak_asr']:.2f}->{a['jailbreak_asr']:.2f} util {b['utility']:.2f}->{a['utility']:.2f} ({a['utility']-b['utility']:+.2f}) "
          f"u+t {a['utility_with_trigger']:.2f} (gap {a['utility']-a['utility_with_trigger']:.2f}) "
          f"over {b['over_refusal']:.3f}->{a['over_refusal']:.3f} ({a['over_refusal']-b['over_refusal']:+.3f}) "
          f"step {r['best_step']} mode {r['mode']} {r['triggers']} s {r['seconds']:.0f} peak {r['peak_rss_mb']:.0f}")
