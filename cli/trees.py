"""`entmtp trees`: list and show draft trees and tree banks (a shipped bank as derived on
this machine), a bank's best static trees, and build a bank source from a calibration."""
from __future__ import annotations

from pathlib import Path

import typer

from entmtp.errors import EntmtpError, Interrupted, UsageError

app = typer.Typer(no_args_is_help=True, help="Draft trees shipped with entmtp or in JSON files.")


@app.command("show")
def trees_show(
    name: str = typer.Argument(..., help="A shipped tree or bank name, or a tree/bank JSON path."),
    cost_curve: Path | None = typer.Option(None, "--cost-curve", help="A bank source: derive it on this "
                                           "cost-curve file (default: this machine's, measured once if not cached)."),
    as_json: bool = typer.Option(False, "--json", help="A bank: print the (derived) bank document as JSON; "
                                 "saved to a file, it pins those trees (--bank FILE)."),
    model: str | None = typer.Option(None, "--model", help="A bank source without --cost-curve: the model whose "
                                     "step cost to use (default: the one the bank names)."),
    heads: str | None = typer.Option(None, "--heads", help="A bank source without --cost-curve: the heads file "
                                     "or folder (default: the shipped ones)."),
    dtype: str | None = typer.Option(None, "--dtype", help="A bank source without --cost-curve: the dtype whose "
                                     "step cost to use (default bf16)."),
) -> None:
    """Render a tree with its nodes per depth, or a bank with its trees and hulls.

    A shipped bank is a machine-free source: it is shown as derived on this machine's
    cost curve (or --cost-curve's), with the curve it used."""
    import json

    from rich.console import Console

    from entmtp.schedule.bank import bank_from_document, list_banks
    from entmtp.trees.files import load_tree
    from entmtp.trees.render import render_bank, render_tree
    from entmtp.tune.loading import read_any_bank
    from entmtp.tune.source import is_source

    given = [option for option, value in (("--json", as_json), ("--cost-curve", cost_curve), ("--model", model),
                                          ("--heads", heads), ("--dtype", dtype)) if value]
    if not (name in list_banks() or (name.endswith(".json") and _is_bank_file(Path(name)))):
        if given:
            raise UsageError(f"{given[0]} goes with a bank; {name!r} is a tree")
        Console().print(render_tree(load_tree(name)))
        return
    document, where = read_any_bank(name)
    if is_source(document):
        document = _derive_here(document, where, cost_curve, model, heads, dtype)
    elif [option for option in given if option != "--json"]:
        raise UsageError(f"{where} is already built on its own cost curve: --cost-curve, --model, --heads and "
                         "--dtype go with a bank source")
    if as_json:
        typer.echo(json.dumps(document, indent=1))
        return
    Console().print(render_bank(bank_from_document(document, where)))


def _derive_here(source: dict, where: str, cost_curve: Path | None, model: str | None, heads: str | None,
                 dtype: str | None) -> dict:
    """A source's bank document on --cost-curve's curve, or on this machine's."""
    from entmtp.tune.source import derive_bank

    curve, described = _curve_here(source, cost_curve, model, heads, dtype)
    return derive_bank(source, curve, cost=described)


def _curve_here(source: dict, cost_curve: Path | None, model: str | None, heads: str | None,
                dtype: str | None, draft_vocab: str | None = None) -> tuple[list, dict]:
    """(curve, what it is): --cost-curve's, else $ENTMTP_COST_CURVE's when --model,
    --heads, --dtype and --draft-vocab are not given, else this machine's for them (the
    model and heads load to look it up, and to measure it when not cached)."""
    import os

    from entmtp.heads.shipped import draft_vocab_size
    from entmtp.tune.machine_cost import ENV_FILE, curve_for_bank, describe_curve, differences, read_cost_file

    draft_vocab_size(draft_vocab)  # a bad value is a usage error before anything loads
    draft_vocab = None if draft_vocab == "off" else draft_vocab
    setup = [option for option, value in (("--model", model), ("--heads", heads), ("--dtype", dtype),
                                          ("--draft-vocab", draft_vocab)) if value]
    if cost_curve is not None and setup:
        raise UsageError(f"{', '.join(setup)} {'does' if len(setup) == 1 else 'do'} not go with --cost-curve "
                         "(they choose this machine's curve instead)")
    via = ""
    if cost_curve is None and os.environ.get(ENV_FILE) and not setup:
        cost_curve, via = Path(os.environ[ENV_FILE]), f"${ENV_FILE}"
    if cost_curve is not None:
        curve_document = read_cost_file(cost_curve, via)
        found = differences(curve_document, None)
        if found:
            typer.echo(f"entmtp: warning: cost curve {cost_curve} was measured on another machine or setup "
                       f"({'; '.join(found)}); using it anyway", err=True)
        return curve_document["curve"], describe_curve(curve_document, f"file {cost_curve}")
    from entmtp.heads.shipped import load_draft_vocab, load_model_heads
    from entmtp.model.loader import load_model, parse_dtype

    provenance = source["provenance"]
    loaded = load_model(model or provenance.get("model", {}).get("name"), parse_dtype(dtype or "bf16"))
    loaded_heads = load_model_heads(loaded, provenance["heads"]["kind"], heads)
    vocab = load_draft_vocab(loaded, provenance["heads"]["kind"], heads, draft_vocab)
    return curve_for_bank(loaded, loaded_heads, source, top_k=provenance["heads"].get("top_k", 10),
                          draft_vocab=vocab, use_env=False)


@app.command("candidates")
def trees_candidates(
    name: str = typer.Argument(..., help="A shipped bank (source) name or a source JSON path."),
    top: int = typer.Option(6, "--top", help="How many candidates, best modeled tok/s first."),
    min_nodes: int = typer.Option(0, "--min-nodes", help="Only candidates of at least this many nodes (say, the "
                                  "best trees that really speculate, beside the best of all)."),
    out: Path | None = typer.Option(None, "--out", help="Write each as a tree file NAME.json in this folder "
                                    "(for medusa@FILE / hydra@FILE in bench)."),
    cost_curve: Path | None = typer.Option(None, "--cost-curve", help="Model the step cost on this file "
                                           "(default: this machine's curve)."),
    model: str | None = typer.Option(None, "--model", help="Without --cost-curve: whose step cost."),
    heads: str | None = typer.Option(None, "--heads", help="Without --cost-curve: the heads file or folder."),
    dtype: str | None = typer.Option(None, "--dtype", help="Without --cost-curve: the dtype whose step cost "
                                     "(default bf16)."),
    draft_vocab: str | None = typer.Option(None, "--draft-vocab", help="Without --cost-curve: the step cost "
                                           "drafting over this shortlist (heads, N or off; for hydra@FILE+dv)."),
) -> None:
    """A source's best static trees among all its candidates on this machine's curve
    (modeled: de-biased accepted length from the calibration steps, ms from the curve)."""
    from entmtp.jsonfile import write_json
    from entmtp.outputs import check_output_folder
    from entmtp.schedule.cost import monotone_curve
    from entmtp.tune.build import candidates_from, canonical_paths
    from entmtp.tune.loading import read_any_bank
    from entmtp.tune.source import corrections_from, is_source

    if top < 1:
        raise UsageError(f"--top must be >= 1, got {top}")
    if min_nodes < 0:
        raise UsageError(f"--min-nodes must be >= 0, got {min_nodes}")
    if out is not None:
        out = check_output_folder(out, "--out")
    source, where = read_any_bank(name)
    if not is_source(source):
        raise UsageError(f"{where} is a built bank; candidates come from a bank source")
    curve, described = _curve_here(source, cost_curve, model, heads, dtype, draft_vocab)
    fitted = monotone_curve(curve)
    extras = [(e["name"], canonical_paths(e["paths"])) for e in source["extra_trees"]]
    candidates = candidates_from({"steps": source["steps"], "superset": source["superset"], "cost_curve": fitted},
                                 source["max_nodes"], fitted, extras)
    corrected = corrections_from(source["rollouts"])
    everything = len(candidates)
    candidates = [c for c in candidates if c.nodes >= min_nodes]
    if not candidates:
        raise UsageError(f"no candidate of {source['name']} has {min_nodes} or more nodes "
                         f"(its largest: {source['max_nodes']})")
    rate = {id(c): 1000.0 * (1.0 + (corrected(c) if c.nodes else 0.0)) / c.step_ms for c in candidates}
    best = sorted(candidates, key=lambda c: -rate[id(c)])[:top]
    kept = f", {len(candidates)} of them with {min_nodes}+ nodes" if min_nodes else ""
    typer.echo(f"{everything} candidates of {source['name']}{kept} on the cost curve of {described['origin']}:")
    for c in best:
        typer.echo(f"  {c.name}\t{c.nodes} nodes\tdepth {c.depth}\taccepted {corrected(c) if c.nodes else 0:.3f}"
                   f"\t{c.step_ms:.1f} ms\t{rate[id(c)]:.1f} tok/s (model)")
        if out is not None:
            metadata = {"from": source["name"], "model_tok_s": round(rate[id(c)], 2), "cost": described["origin"]}
            write_json(out / f"{c.name}.json", {"format": "entmtp-tree/1", "name": c.name,
                                                "paths": [list(p) for p in c.paths], "metadata": metadata}, indent=1)


def _is_bank_file(path: Path) -> bool:
    """Its JSON `format` key says so (a tree file says entmtp-tree/1). Read with the
    tree/bank guards (a regular file, its size, its nesting): a FIFO or /dev/zero
    named here is refused instead of read forever."""
    from entmtp.trees.files import read_document

    document = read_document(path, f"file {str(path)!r}")
    return isinstance(document, dict) and str(document.get("format", "")).startswith(("entmtp-bank/",
                                                                                       "entmtp-bank-source/"))


@app.command("build")
def trees_build(
    calibration: Path = typer.Option(..., "--calibration", help="A file written by entmtp calibrate."),
    out: Path | None = typer.Option(None, "--out", help="Bank source JSON, overwritten if it exists "
                                    "(default: <model>-<heads>-<task>.json here)."),
    task: str | None = typer.Option(None, "--task", help="The task the bank is for (warns if the calibration "
                                    "is another's)."),
    name: str | None = typer.Option(None, "--name", help="Bank name (default <model>-<heads>-<task>)."),
    max_nodes: int = typer.Option(128, "--max-nodes", help="Largest tree grown (limited by the superset)."),
    rollout_tokens: int | None = typer.Option(None, "--rollout-tokens", help="New tokens per prompt in the "
                                              "self-rollouts (default 64; not with --rollout-prompts 0)."),
    rollout_prompts: int = typer.Option(6, "--rollout-prompts", help="Calibration prompts per grid tree for the "
                                        "self-rollout de-biasing (0 = skip; needs the model)."),
    model: str | None = typer.Option(None, "--model", help="The model for the self-rollouts (not with "
                                     "--rollout-prompts 0)."),
    heads_path: str | None = typer.Option(None, "--heads", help="Heads file or folder the calibration was made "
                                          "with, for the self-rollouts (default: the shipped ones; not with "
                                          "--rollout-prompts 0)."),
) -> None:
    """A machine-free bank source from a calibration: its steps, tables and self-rollouts, no step cost.

    Each machine derives its bank (trees, hulls, ladder, recommended scheduler) from
    it on its own cost curve when it is used (entmtp trees show OUT shows that bank).
    --out is overwritten if it exists."""
    import json

    from entmtp.jsonfile import write_json
    from entmtp.outputs import check_output_file
    from entmtp.schedule.bank import shipped_bank_name
    from entmtp.tasks import TASKS
    from entmtp.trees.tree import MAX_NODES, check_name
    from entmtp.tune.build import read_calibration
    from entmtp.tune.calibrate import self_rollout_with
    from entmtp.tune.source import build_source, check_source

    for option, value, least in (("--max-nodes", max_nodes, 1), ("--rollout-prompts", rollout_prompts, 0),
                                 ("--rollout-tokens", rollout_tokens, 1)):
        if value is not None and value < least:
            raise UsageError(f"{option} must be >= {least}, got {value}")
    if max_nodes > MAX_NODES:
        raise UsageError(f"--max-nodes must be at most {MAX_NODES}, got {max_nodes}")
    if rollout_prompts == 0:
        # Both only serve the self-rollouts, which --rollout-prompts 0 skips.
        unused = [option for option, value in (("--model", model), ("--heads", heads_path),
                                               ("--rollout-tokens", rollout_tokens)) if value is not None]
        if unused:
            raise UsageError(f"{' and '.join(unused)} {'is' if len(unused) == 1 else 'are'} only used by the "
                             "self-rollouts, which --rollout-prompts 0 skips; drop "
                             f"{'it' if len(unused) == 1 else 'them'} or give --rollout-prompts N")
    if task is not None and task not in TASKS:
        raise UsageError(f"unknown task {task!r}; available: {', '.join(TASKS)}")
    if name is not None and (not name.strip() or "/" in name or "\\" in name):
        raise UsageError(f"--name must be a bank name, not a path: {name!r}")
    if name is not None:
        try:
            check_name(name, "--name")
        except EntmtpError as error:
            raise UsageError(str(error)) from None
    rollout_tokens = 64 if rollout_tokens is None else rollout_tokens
    if heads_path is not None and not Path(heads_path).exists():
        raise EntmtpError(f"--heads {heads_path} does not exist")
    document = read_calibration(calibration)
    provenance = document["provenance"]
    if task is not None and task != provenance.get("task"):
        typer.echo(f"entmtp: warning: calibration {calibration} is for task {provenance.get('task')!r}, "
                   f"not {task!r}", err=True)
    bank_name = name or shipped_bank_name(provenance["model"]["name"], provenance["heads"]["kind"],
                                          task or provenance["task"])
    # The default path comes from the calibration; checked before the self-rollouts (minutes).
    path = check_output_file(out or Path(f"{bank_name}.json"), "--out")
    if path.resolve() == calibration.resolve():
        raise UsageError(f"--out {path} is the calibration file itself; choose another path for the bank source")
    try:
        rollout = None
        if rollout_prompts:
            rollout = self_rollout_with(document, rollout_prompts, model, heads_path, max_new_tokens=rollout_tokens,
                                        log=lambda m: typer.echo(m, err=True))
        source = build_source(document, bank_name, max_nodes=max_nodes, self_rollout=rollout,
                              rollout_setup={"prompts": rollout_prompts, "tokens": rollout_tokens},
                              log=lambda m: typer.echo(m, err=True))
        check_source(json.loads(json.dumps(source)), f"the source built from {calibration}")   # as it will load
        write_json(path, source, separators=(",", ":"))
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted: nothing was written (the bank is written to {path} only when "
                          "complete)") from None
    typer.echo(f"wrote {path}: bank source of {len(source['steps']['accepted_ranks'])} calibration steps, "
               f"{len(source['rollouts'])} self-rolled-out trees, extra trees "
               f"{', '.join(e['name'] for e in source['extra_trees']) or '(none)'}; "
               f"entmtp trees show {path} derives its bank on this machine's cost curve")


@app.command("list")
def trees_list() -> None:
    """Names of the shipped trees and banks."""
    from entmtp.schedule.bank import bank_from_document, list_banks
    from entmtp.trees.files import list_trees, load_tree
    from entmtp.tune.loading import read_any_bank
    from entmtp.tune.source import is_source

    for name in list_trees():
        tree = load_tree(name)
        typer.echo(f"{name}\t{tree.n_nodes - 1} nodes\tdepth {tree.max_depth}")
    for name in list_banks():
        document, where = read_any_bank(name)
        if is_source(document):
            provenance = document["provenance"]
            typer.echo(f"{name}\tbank source ({provenance['heads']['kind']} heads, task {provenance.get('task')}, "
                       f"{len(document['steps']['accepted_ranks'])} calibration steps): its trees are derived per "
                       "machine (entmtp trees show NAME)")
            continue
        bank = bank_from_document(document, where)
        typer.echo(f"{name}\tbank of {len(bank.trees)} trees\t"
                   f"{', '.join(t.name for t in bank.trees)} (static best {bank.trees[bank.static_best].name})")
