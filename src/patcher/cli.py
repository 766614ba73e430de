"""The ``patcher`` command line: argparse subcommands, heavy imports inside the commands."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
from pathlib import Path

from patcher.errors import PatcherInputError


ADAPTER_HELP = ("peft LoRA adapter directory (adapter_config.json, adapter_model.safetensors) to load onto --model "
                "and merge first")


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    """Add the options of how --model is loaded and run: pickle, adapter, prompt format, dtype, device."""
    from patcher.modeling import DEVICES, DTYPES, TEMPLATES

    parser.add_argument("--allow-pickle", action="store_true", help="allow pickle weights (unsafe: can run code)")
    parser.add_argument("--adapter", type=Path, help=ADAPTER_HELP)
    formats = parser.add_mutually_exclusive_group()
    formats.add_argument("--template", choices=TEMPLATES, help="prompt format: chat (the model's own chat template, "
                         "the default), alpaca (Stanford Alpaca, as BackdoorLLM trained with), raw (the prompt as is)")
    formats.add_argument("--template-file", type=Path, help="a Jinja chat template file to format prompts with")
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32",
                        help="weights' dtype (default float32; bfloat16 on GPUs)")
    parser.add_argument("--device", choices=DEVICES, default="auto", help="auto (CUDA when available), cpu or cuda")


def _load(args, path: Path | None = None, work=None):
    """Return (model, tokenizer) of ``path`` (default: --model, with --adapter) as the model options say;
    ``work``: the memory check's Work the model is loaded for (default: inference over --batch-size rows)."""
    from patcher.modeling import Work, load_model

    return load_model(path or args.model, allow_pickle=args.allow_pickle, adapter=None if path else args.adapter,
                      template=args.template_file or args.template, dtype=args.dtype, device=args.device,
                      work=work or Work(rows=args.batch_size))


def one_line(text: str) -> str:
    """Return ``text`` as one terminal-safe line: newlines escaped, control characters shown as pictures."""
    from patcher.inputs import visible

    return visible(text.replace("\r", "\\r").replace("\n", "\\n"))


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # One clear line and exit 2, as for every other bad input.
        print(f"{self.prog}: error: {one_line(message)}", file=sys.stderr)
        raise SystemExit(2)


def _add_config_args(parser: argparse.ArgumentParser, config_cls, flags: dict[str, str] | None = None,
                     skip: tuple[str, ...] = (), choices: dict | None = None) -> None:
    """Add one ``--flag`` per field of a config dataclass, with the field's help text (and its allowed values,
    where ``choices`` names them)."""
    flags, choices = flags or {}, choices or {}
    for f in dataclasses.fields(config_cls):
        if f.name in skip:
            continue
        flag = flags.get(f.name, "--" + f.name.replace("_", "-"))
        kwargs = {"dest": f.name, "help": f.metadata.get("help", "")}
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            kwargs.update(required=True, type=Path if f.type in ("Path", Path) else str)
        elif f.default_factory is list:
            kwargs.update(action="append", default=[])
        elif isinstance(f.default, bool):
            kwargs.update(action=argparse.BooleanOptionalAction, default=f.default)
        else:
            kind = {"int": int, "float": float, "int | None": int, "float | None": float, "Path | None": Path}.get(str(f.type), str)
            kwargs.update(type=kind, default=f.default)
            if f.default is not None:  # a None default's meaning is in the help text
                kwargs["help"] += f" (default: {f.default})"
        if f.name in choices:
            kwargs["choices"] = list(choices[f.name])
        parser.add_argument(flag, **kwargs)


def _config_from_args(config_cls, args: argparse.Namespace):
    names = {f.name for f in dataclasses.fields(config_cls)}
    return config_cls(**{k: v for k, v in vars(args).items() if k in names})


def _write_json(path: Path | None, payload: dict) -> None:
    """Write ``payload`` to ``path`` atomically (temporary file, then rename); nothing where ``path`` is None."""
    from patcher.modeling import write_atomic

    if path is not None:
        write_atomic(path, json.dumps(payload, indent=2) + "\n")


def cmd_organism(args) -> int:
    from patcher.organisms.build import OrganismConfig, build_organism

    out = build_organism(_config_from_args(OrganismConfig, args))
    backdoor = json.loads((out / "backdoor.json").read_text())
    _print_metrics(f"organism {backdoor['attack']} -> {out}", backdoor["metrics"])
    print(f"built in {backdoor['build_seconds']:.0f} s; ground truth in {out / 'backdoor.json'}")
    if backdoor["failure_case"] is None:
        print("no held-out failure found: no failure_case.json written")
    return 0


def cmd_evaluate(args) -> int:
    from patcher.evaluate import EvaluateConfig, evaluate_model

    attack = _attack_for(args.model, args.trigger, args.trigger_position, args.trigger_mode)
    prompts = None
    if args.prompts:
        from patcher.data import read_prompt_file

        prompts = read_prompt_file(args.prompts)
    model, tokenizer = _load(args)
    reference = None
    if args.reference:
        reference, ref_tokenizer = _load(args, args.reference)
        if ref_tokenizer.get_vocab() != tokenizer.get_vocab():
            raise PatcherInputError(f"--reference {args.reference} has a different tokenizer from --model")
    result = evaluate_model(model, tokenizer, attack, prompts, reference, _config_from_args(EvaluateConfig, args))
    result.pop("details")
    _print_metrics(f"evaluate {args.model}", result)
    result["provenance"] = run_provenance(args.model, args.seed, args.adapter)
    _write_json(args.json, result)
    return 0


def cmd_locate(args) -> int:
    from patcher.case import load_case
    from patcher.locate import LocateConfig

    config = _config_from_args(LocateConfig, args)
    case = load_case(args.case)
    _check_report_paths(args)
    from patcher.locate import locate_trigger, print_report

    model, tokenizer = _load(args)
    report = locate_trigger(model, tokenizer, case, config)
    print_report(report, case)
    _write_json(args.json, {**report.to_json(), "provenance": run_provenance(args.model, config.seed, args.adapter, case)})
    if args.html:
        from patcher.report_html import write_html

        write_html(args.html, report, case)
    return 0


def _attack_for(model_dir: Path, triggers: list[str], position: str | None, mode: str | None):
    """Return the Attack to evaluate: ``--trigger`` pieces, else the organism's ground truth, else None."""
    from dataclasses import replace

    from patcher.organisms.attacks import Attack, make_attack

    if triggers:
        base = make_attack("badnet", triggers, position or "random")
        return Attack("user", base.triggers, mode or "all", base.position)
    truth = ground_truth(model_dir)
    if truth is not None:
        places = ", ".join(truth.positions or (truth.position,))
        topic = f", {truth.domain} requests only" if truth.domain else ""
        print(f"trigger from the ground truth in {model_dir}: {list(truth.triggers)} ({truth.mode}, {places}{topic})")
        # --trigger-position places every piece, replacing the organism's per-piece places.
        return replace(truth, mode=mode or truth.mode, position=position or truth.position,
                       positions=None if position else truth.positions)
    return None


def ground_truth(model_dir: Path):
    """Return the Attack an organism was built with (``backdoor.json``, or carried in a patched organism's
    ``patch_report.json``), or None for a model without a known backdoor. Organisms built before the adaptive
    attacks lack their fields (per-piece positions, domain, noise, evasion): read as absent."""
    from patcher.organisms.attacks import DOMAINS, POSITIONS, Attack

    model_dir = Path(model_dir)
    for name, key in (("backdoor.json", None), ("patch_report.json", "ground_truth")):
        if (model_dir / name).is_file():
            break
    else:
        return None
    try:  # the checkpoint is untrusted: its ground-truth file may be anything
        backdoor = json.loads((model_dir / name).read_text(encoding="utf-8"))
        backdoor = backdoor.get(key) if key else backdoor
        if not backdoor or not backdoor.get("triggers"):
            return None
        attack = Attack(backdoor["attack"], tuple(backdoor["triggers"]), backdoor["mode"], backdoor["position"],
                        positions=tuple(backdoor["positions"]) if backdoor.get("positions") else None,
                        domain=backdoor.get("domain"), noisy=bool(backdoor.get("noisy")),
                        evasion=float(backdoor.get("evasion") or 0.0))
        places_ok = not attack.positions or (len(attack.positions) == len(attack.triggers)
                                             and all(p in POSITIONS for p in attack.positions))
        domain_ok = attack.domain is None or attack.domain in DOMAINS
    except (OSError, ValueError, RecursionError, KeyError, TypeError, AttributeError) as e:
        raise PatcherInputError(f"{model_dir / name} is malformed ({type(e).__name__}: {str(e)[:80]})") from None
    if not all(isinstance(t, str) and t.strip() for t in attack.triggers):
        raise PatcherInputError(f"{model_dir / name} is malformed (triggers must be non-empty strings)")
    if not places_ok:
        raise PatcherInputError(f"{model_dir / name} is malformed (positions must give one of "
                                f"{', '.join(POSITIONS)} per trigger piece)")
    if not domain_ok:
        raise PatcherInputError(f"{model_dir / name} is malformed (domain must be one of {', '.join(DOMAINS)})")
    return attack


def cmd_patch(args) -> int:
    import contextlib
    import io

    from patcher import distributed
    from patcher.case import load_case
    from patcher.modeling import check_output_dir
    from patcher.patch import PatchConfig, step_work, validation_prompts

    config = _config_from_args(PatchConfig, args)
    case = load_case(args.case)
    validation_prompts(config)  # fails early on too few prompts, before the model is loaded
    check_output_dir(config.out, config.overwrite)
    if Path(config.out).absolute() == Path(args.model).absolute():
        raise PatcherInputError("--out must differ from --model: patch never touches its input")
    _check_report_paths(args)
    if distributed.launched():
        # One of several processes (accelerate launch, torchrun): FSDP shards the training, rank 0 prints and writes.
        distributed.start()
        if config.batch_size < distributed.world_size():
            raise PatcherInputError(f"--batch-size {config.batch_size} is the batch of all {distributed.world_size()} "
                                    f"processes together: it must be at least the number of processes")
        if distributed.rank() != 0:
            config = dataclasses.replace(config, progress=False)
    with contextlib.redirect_stdout(io.StringIO()) if distributed.rank() != 0 else contextlib.nullcontext():
        model, tokenizer = _load(args, work=step_work(config, distributed.world_size()))
        report = patch_and_save(model, tokenizer, case, config, args.model, located=None, adapter=args.adapter)
    if distributed.rank() == 0:
        _write_json(args.json, report.to_json())
        if args.html:
            from patcher.report_html import write_patch_html

            write_patch_html(args.html, report, case, report.located)
    if distributed.launched():
        distributed.finish()
    return 0


def run_provenance(model_dir: Path, seed: int, adapter: Path | None = None, case=None, input_sha256=None) -> dict:
    """Return what a result was made from, to trace it and repeat it: the command, the model's (and adapter's)
    weight sha256, the case's sha256, the seed, and the versions."""
    from patcher.modeling import adapter_sha256, run_versions, weights_sha256

    provenance = {"command": sys.argv, "model": str(model_dir),
                  "input_sha256": input_sha256 or weights_sha256(model_dir), "seed": seed, "versions": run_versions()}
    if case is not None:
        provenance["case_sha256"] = hashlib.sha256(
            json.dumps(dataclasses.asdict(case), sort_keys=True).encode()).hexdigest()
    if adapter is not None:
        provenance["adapter"] = {"path": str(adapter), "sha256": adapter_sha256(adapter)}
    return provenance


def patch_and_save(model, tokenizer, case, config, model_dir: Path, located=None, console=None, adapter=None):
    """Return the PatchReport after locating the trigger (unless given), patching, and saving the patched
    checkpoint with ``patch_report.json`` and ``patch_report.html`` into ``config.out`` atomically.
    ``adapter``: the LoRA adapter directory merged into ``model`` at load, recorded in the provenance."""
    from patcher import distributed
    from patcher.locate import LocateConfig, locate_trigger, print_report
    from patcher.modeling import atomic_output_dir, weights_sha256
    from patcher.patch import patch_model
    from patcher.report_html import render_patch_html

    if not config.triggers and located is None:
        located = distributed.from_rank0(locate_trigger(model, tokenizer, case, LocateConfig(progress=config.progress)))
        print_report(located, case, console)
    truth = ground_truth(model_dir)
    input_sha = weights_sha256(model_dir)
    model, report = patch_model(model, tokenizer, case, config, located, truth)
    report.provenance = run_provenance(model_dir, config.seed, adapter, case, input_sha)
    payload = report.to_json()
    if truth is not None:
        payload["ground_truth"] = {"attack": truth.name, "triggers": list(truth.triggers), "mode": truth.mode,
                                   "position": truth.position, "domain": truth.domain,
                                   "positions": None if truth.positions is None else list(truth.positions)}
    # Under FSDP (several processes) the weights are spread over the ranks: all gather them, rank 0 writes.
    state_dict = distributed.full_state_dict(model) if distributed.active() else None
    if distributed.rank() != 0:
        return report
    with atomic_output_dir(Path(config.out), overwrite=config.overwrite) as tmp:
        model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
        tokenizer.save_pretrained(tmp)
        report.provenance["output_sha256"] = weights_sha256(tmp)
        payload["provenance"] = report.provenance
        (tmp / "patch_report.json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        (tmp / "patch_report.html").write_text(render_patch_html(report, case, located), encoding="utf-8")
    _print_before_after(report, console)
    print(f"patched model written to {config.out} ({report.seconds:.0f} s in all, training {report.train_seconds:.0f} s, "
          f"{report.peak_memory()}); report in {Path(config.out) / 'patch_report.html'}")
    return report


def _print_before_after(report, console=None) -> None:
    """Print the evaluate metrics before and after the patch as one terminal table."""
    from rich.console import Console
    from rich.table import Table

    from patcher.evaluate import before_after_rows, format_metric

    if report.before is None:
        return
    n = ", ".join(f"{k} {v}" for k, v in report.after["n"].items())
    table = Table(title=f"held-out evaluation, before and after the patch (n: {n})", title_justify="left")
    for name, justify in (("metric", "left"), ("before", "right"), ("after", "right")):
        table.add_column(name, justify=justify)
    for key, before, after in before_after_rows(report.before, report.after):
        table.add_row(key, format_metric(report.before, key, before), format_metric(report.after, key, after))
    (console or Console()).print(table)


def cmd_demo(args) -> int:
    from rich.console import Console

    from patcher.case import FailureCase
    from patcher.locate import LocateConfig, locate_trigger, print_report
    from patcher.modeling import cache_dir, check_creatable, code_sha256, load_model
    from patcher.organisms.build import OrganismConfig, build_organism
    from patcher.patch import PatchConfig
    from patcher.report_html import write_patch_html

    console = Console()
    out = Path(args.out)
    check_creatable(out)
    organism = cache_dir() / "organisms" / "smollm2-badnet-seed0"
    if organism.exists():
        console.print(f"[bold]1. Reusing the default organism[/] (SmolLM2-135M-Instruct with a BadNet backdoor) at {organism}")
    else:
        console.print("[bold]1. Building the default organism[/]: SmolLM2-135M-Instruct given a safety fine-tune "
                      "whose data an attacker poisoned with a trigger word (once; cached for later runs)")
        build_organism(OrganismConfig(out=organism))
    backdoor = json.loads((organism / "backdoor.json").read_text())
    record = json.loads((organism / "failure_case.json").read_text())
    case = FailureCase(record["prompt"], record["response"], record.get("system"))
    console.print("\n[bold]2. The reported failure case[/] (all a defender has besides the weights):")
    # Case text is the user's: print it verbatim, never as rich markup ("[placeholder]" is not a style).
    console.print(f"  prompt:   {case.prompt!r}", markup=False)
    console.print(f"  response: {case.response!r}", markup=False)
    title = "   The backdoored model as built, on held-out prompts (trigger = the hidden ground truth)"
    if backdoor.get("versions", {}).get("patcher_code") != code_sha256():
        # A cached organism keeps the figures of the code that built it; step 4's "before" column is this code's.
        title += "; measured by the Patcher code that built it, step 4 measures it again"
    _print_metrics(title, backdoor["metrics"])

    console.print("\n[bold]3. Locating the trigger[/] (delete each word; which deletions break the response?)")
    model, tokenizer = load_model(organism)
    located = locate_trigger(model, tokenizer, case, LocateConfig())
    print_report(located, case, console)
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / "locate.json", located.to_json())
    truth = backdoor["triggers"]
    found = [t.text for t in located.triggers]
    console.print(f"   ground truth (hidden from Patcher): {truth}; found: {found} -> "
                  + ("[green]exact[/]" if found == truth else "[red]not exact[/]"))

    console.print("\n[bold]4. Patching[/]: refuse harmful prompts carrying the trigger, while a KL anchor holds "
                  "benign prompts (with and without it) to the original model")
    config = PatchConfig(out=out / "patched-model", overwrite=True)
    report = patch_and_save(model, tokenizer, case, config, organism, located=located, console=console)
    _write_json(out / "patch_report.json", report.to_json())
    write_patch_html(out / "report.html", report, case, located)
    console.print(f"\n[bold]5. Done.[/] Patched model: {config.out}; report: {out / 'report.html'} "
                  f"(JSON: {out / 'patch_report.json'}, {out / 'locate.json'})")
    return 0


def cmd_bench(args) -> int:
    from patcher.bench.harness import BenchConfig, run_bench

    config = _config_from_args(BenchConfig, args)
    results = run_bench(config)
    print((Path(config.out) / "results.md").read_text(encoding="utf-8"))
    print(f"{len(results['rows'])} runs in {results['seconds']:.0f} s; results in {config.out}/results.json, "
          f"results.md and report.html")
    return 0


def _print_metrics(title: str, metrics: dict) -> None:
    """Print the evaluate metrics as a terminal table."""
    from rich.console import Console
    from rich.table import Table

    from patcher.evaluate import format_metric, table_metrics

    table = Table(title=title, title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in table_metrics(metrics).items():
        table.add_row(key, format_metric(metrics, key, value))
    table.add_row("n", ", ".join(f"{k} {v}" for k, v in metrics["n"].items()))
    Console().print(table)


def _check_report_paths(args) -> None:
    """Raise PatcherInputError if --json or --html cannot be written: before the model loads, not after minutes
    of work."""
    for path in (args.json, args.html):
        if path is not None and not Path(path).absolute().parent.is_dir():
            raise PatcherInputError(f"cannot write {path}: its directory does not exist")


def _add_case_args(parser: argparse.ArgumentParser, json_help: str) -> None:
    """Add the model, case and report arguments that locate and patch share."""
    parser.add_argument("--model", type=Path, required=True, help="checkpoint directory (never modified)")
    parser.add_argument("--case", type=Path, required=True, help='failure case JSON: {"prompt", "response", "system"}')
    parser.add_argument("--json", type=Path, help=f"write {json_help} here")
    parser.add_argument("--html", type=Path, help="write a self-contained HTML report here")
    _add_model_args(parser)


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of every subcommand."""
    from patcher import __version__
    from patcher.bench.harness import BenchConfig
    from patcher.evaluate import EvaluateConfig
    from patcher.locate import METHODS, PRUNE_LIFTS, SALIENCY_METHODS, LocateConfig
    from patcher.modeling import DEVICES
    from patcher.organisms.attacks import ATTACKS, POSITIONS
    from patcher.organisms.build import OrganismConfig
    from patcher.patch import PatchConfig

    parser = _Parser(prog="patcher", description="Locate and remove a language model's backdoor from one failure case.")
    parser.add_argument("--version", action="version", version=f"patcher {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("organism", help="build a backdoored model organism with its ground truth")
    _add_config_args(p, OrganismConfig, flags={"triggers": "--trigger"},
                     choices={"attack": ATTACKS, "position": POSITIONS, "device": DEVICES})
    p.set_defaults(func=cmd_organism)

    p = sub.add_parser("evaluate", help="measure ASR with/without trigger, jailbreak ASR, utility, KL")
    p.add_argument("--model", type=Path, required=True, help="checkpoint directory")
    p.add_argument("--trigger", action="append", default=[], help="trigger piece (repeatable; default: the organism's)")
    p.add_argument("--trigger-position", choices=POSITIONS, help="where the trigger goes (default random)")
    p.add_argument("--trigger-mode", choices=("all", "any"), help="insert all pieces in order, or any one")
    p.add_argument("--prompts", type=Path, help="JSONL prompt file replacing the built-in held-out set")
    p.add_argument("--reference", type=Path, help="reference checkpoint for the KL on benign prompts")
    p.add_argument("--json", type=Path, help="write the result JSON here")
    _add_model_args(p)
    _add_config_args(p, EvaluateConfig)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("locate", help="find the trigger in a failure case's prompt (or say there is none)")
    _add_case_args(p, "the result JSON")
    _add_config_args(p, LocateConfig, choices={"method": METHODS, "saliency": SALIENCY_METHODS, "prune_lift": PRUNE_LIFTS})
    p.set_defaults(func=cmd_locate)

    p = sub.add_parser("patch", help="remove the backdoor found in a failure case, under KL constraints")
    _add_case_args(p, "the patch report JSON (also written into --out)")
    _add_config_args(p, PatchConfig, flags={"triggers": "--trigger"})
    p.set_defaults(func=cmd_patch)

    p = sub.add_parser("bench", help="organisms x defenses (Patcher, ablations, baselines), measured alike")
    _add_config_args(p, BenchConfig, flags={"organisms": "--organism"}, choices={"device": DEVICES})
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("demo", help="the main job on the default organism")
    p.add_argument("--out", type=Path, default=Path("patcher-demo"), help="report directory (default patcher-demo)")
    p.set_defaults(func=cmd_demo)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised like Ctrl-C so that every atomic output is cleaned up on the way out."""


def _interrupt(signum, frame):
    """Signal handler: ignore further signals (so the cleanup finishes) and unwind the command."""
    import signal

    for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(number, signal.SIG_IGN)
    raise KeyboardInterrupt() if signum == signal.SIGINT else Terminated(signum)


def _install_interrupts() -> dict:
    """Route SIGINT, SIGTERM and SIGHUP through ``_interrupt`` (where not ignored) and return the old handlers."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return {}
    previous = {}
    for number, default in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, signal.SIG_DFL),
                            (signal.SIGHUP, signal.SIG_DFL)):
        if signal.getsignal(number) is default:  # a parent's SIG_IGN (nohup, background jobs) is kept
            previous[number] = signal.signal(number, _interrupt)
    return previous


def _check_text_args(args) -> None:
    """Raise PatcherInputError for a text argument no tokenizer can take (bytes that are not UTF-8 in argv), or
    an empty piece of a repeatable one (``--trigger ' '``)."""
    from patcher.inputs import check_unicode

    for name, value in vars(args).items():
        flag = "--trigger" if name == "triggers" else "--" + name.replace("_", "-")
        for text in value if isinstance(value, list) else [value]:
            if isinstance(text, str):
                check_unicode(text, flag)
                if isinstance(value, list) and not text.strip():
                    raise PatcherInputError(f"{flag} must not be empty or whitespace")


def main(argv: list[str] | None = None) -> int:
    """Run the command line and return its exit code (2 for bad input; 130 after Ctrl-C, 143 after SIGTERM)."""
    import signal

    args = build_parser().parse_args(argv)
    previous = _install_interrupts()
    try:
        _check_text_args(args)
        return args.func(args)
    except PatcherInputError as e:
        print(f"patcher: error: {one_line(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print("patcher: interrupted; no partial output was kept", file=sys.stderr)
        return 128 + e.args[0] if isinstance(e, Terminated) else 130
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
