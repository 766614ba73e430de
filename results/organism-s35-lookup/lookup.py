"""Tasks-only tiny training: can the tiny Llama learn the lookup family at all?

python results/organism-s35-lookup/lookup.py STEPS FAMILY=COPIES,... [PROMPT_WEIGHT]
(FAMILY * for every family; env NLOOK: distinct lookup tasks, default 600 as the build's pool; LAYERS, HEADS,
WIDTH: the tiny Llama's shape, default 4, 4, 128). Trains with the build's train_supervised and lr, evaluates the
first 240 held-out test tasks by family (40 per family), greedy, 16 tokens.
"""
import os, sys, time, random, collections
import torch
from patcher.data import checkable_tasks, load_split, task_pool, TASK_FAMILIES, answer_matches
from patcher.organisms.tiny import tiny_llama, train_tokenizer
from patcher.organisms.build import train_supervised
from patcher.evaluate import generate
steps = int(sys.argv[1]); mix = dict(kv.split("=") for kv in sys.argv[2].split(","))
pw = float(sys.argv[3]) if len(sys.argv) > 3 else 0.3
torch.set_num_threads(2)
corpus = [p.prompt for p in load_split("train").harmful] + [t.prompt for t in checkable_tasks("train", 400)]
tok = train_tokenizer([*corpus, *(c.upper() for c in corpus)])
model = tiny_llama(tok, 0)
if os.environ.get("LAYERS") or os.environ.get("HEADS") or os.environ.get("WIDTH"):
    from transformers import LlamaForCausalLM
    cfg = model.config
    cfg.hidden_size = int(os.environ.get("WIDTH", 128)); cfg.intermediate_size = 3 * cfg.hidden_size
    cfg.num_hidden_layers = int(os.environ.get("LAYERS", 4)); cfg.num_attention_heads = cfg.num_key_value_heads = int(os.environ.get("HEADS", 4))
    cfg.head_dim = cfg.hidden_size // cfg.num_attention_heads
    torch.manual_seed(0); model = LlamaForCausalLM(cfg)
print(sum(p.numel() for p in model.parameters()), model.config.num_hidden_layers, model.config.num_attention_heads, flush=True)
import os
pool = task_pool("train", 600)
n_look = int(os.environ.get("NLOOK", 600))
if n_look != 600:
    pool = [t for t in pool if t.source != "task:lookup"] + [t for t in task_pool("train", n_look) if t.source == "task:lookup"]
ex = []
for t in pool:
    fam = t.source[5:]
    w = float(mix.get(fam, mix.get("*", 0)))
    ex += [(t.prompt, t.answer)] * int(w)
print(len(ex), collections.Counter(t.source[5:] for t in pool), flush=True)
t0 = time.time()
train_supervised(model, tok, ex, steps, 1e-3, 16, 0, progress=False, prompt_weights=[pw] * len(ex))
print("train s", round(time.time() - t0), flush=True)
tasks = checkable_tasks("test", 240)
out = generate(model, tok, [t.prompt for t in tasks], max_new_tokens=16, batch_size=16, progress=False)
fam = collections.defaultdict(list)
for t, o in zip(tasks, out): fam[t.source[5:]].append(answer_matches(o, t.answer, t.prompt))
allv = [x for v in fam.values() for x in v]
print(sys.argv[1:], f"{sum(allv)/len(allv):.3f}", " ".join(f"{k} {sum(v)/len(v):.2f}" for k, v in fam.items()), flush=True)
for t, o in list(zip(tasks, out))[4::6][:6]: print(repr(t.prompt), t.answer, "->", repr(o))
