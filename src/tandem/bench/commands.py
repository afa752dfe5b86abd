"""`tandem probe`, `tandem eval`, `tandem replay`, `tandem report`, `tandem agree`: evaluation from the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from ..errors import ConfigError, InputError
from .records import Outcome

err = Console(stderr=True)
out = Console()

DataDir = Annotated[str | None, typer.Option(help="benchmark data directory (default: $TANDEM_DATA_DIR)")]
Split = Annotated[str | None, typer.Option(help="split (default: the benchmark's test split)")]
Offset = Annotated[int, typer.Option(help="skip this many problems")]
Limit = Annotated[int | None, typer.Option(help="at most this many problems")]
Sample = Annotated[int | None, typer.Option(help="a random subset of N problems (after offset/limit)")]
Seed = Annotated[int, typer.Option(help="seed for --sample")]
ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="TOML/YAML settings file")]
LlmModel = Annotated[str | None, typer.Option(help="LLM: registry name or GGUF path")]
SlmModel = Annotated[str | None, typer.Option(help="SLM: registry name or GGUF path")]
EffortBudgets = Annotated[str | None, typer.Option(help="each effort's largest budget in LLM tokens, e.g. "
                                                       "low=512,medium=1024,high=1536")]
Preset = Annotated[str | None, typer.Option(help="defaults for a kind of LLM: reasoning (docs/reasoning.md)")]
Prompts = Annotated[Path | None, typer.Option(help="a TOML/YAML file of prompt wordings (docs/reasoning.md)")]
LlmRecording = Annotated[Path | None, typer.Option(help="LLM: a recordings JSONL file to replay as its stream "
                                                         "(the `recorded` backend; docs/reasoning.md)")]
SAMPLING_HELP = ("sampling values, comma-separated KEY=VALUE: temperature, top_p, top_k, min_p, presence_penalty, "
                 "frequency_penalty, repetition_penalty, seed (added to the run's), stop (repeatable; \\n escapes), "
                 "extra.KEY (openai: into the request body)")
LlmSampling = Annotated[str | None, typer.Option(help=f"LLM {SAMPLING_HELP}")]
SlmSampling = Annotated[str | None, typer.Option(help=f"SLM {SAMPLING_HELP}")]
# hf:<path> datasets only
Fields = Annotated[str | None, typer.Option(help="hf: or a local .jsonl: map id/question/answer to its columns, "
                                                 "e.g. question=problem,answer=solution")]
HfConfig = Annotated[str | None, typer.Option(help="hf: the dataset's configuration (subset) name")]
HfDataFiles = Annotated[list[str] | None, typer.Option(help="hf: data files (e.g. with hf:json); repeatable")]
HfTask = Annotated[str | None, typer.Option(help="hf: or a local .jsonl: math | code (default math)")]
HfGrader = Annotated[str | None, typer.Option(help="hf: or a local .jsonl: gsm8k | math | humaneval, or "
                                                   "package.module:function (default: by task)")]


def _field_map(text: str | None) -> dict[str, str] | None:
    if not text:
        return None
    pairs = [p.split("=", 1) for p in text.split(",") if p.strip()]
    if any(len(p) != 2 or not p[0].strip() or not p[1].strip() for p in pairs):
        raise ConfigError(f"--fields {text!r}: use name=column pairs, e.g. question=problem,answer=solution")
    return {k.strip(): v.strip() for k, v in pairs}


def _problems(bench: str, data_dir: str | None, split: str | None, offset: int, limit: int | None,
              sample: int | None, seed: int, *, fields: str | None = None, hf_config: str | None = None,
              hf_data_files: list[str] | None = None, task: str | None = None,
              grader: str | None = None) -> tuple[Any, str, str]:
    """The selected problems, the run's dataset label and the grader's name."""
    from .datasets import load_benchmark
    from .graders import GRADERS, get_grader

    if task not in (None, "math", "code"):
        raise ConfigError(f"--task {task!r}: use math or code")
    if grader is not None and grader not in GRADERS:
        try:  # a name or an import path: refused here, in one line, when it names no grader
            get_grader(grader)
        except ConfigError as exc:
            raise ConfigError(f"--grader {grader!r}: {exc}") from None
    ps = load_benchmark(bench, data_dir, split, field_map=_field_map(fields), hf_config=hf_config,
                        data_files=hf_data_files or None, task=task, grader=grader)  # type: ignore[arg-type]
    sel = ps.select(offset=offset, limit=limit, sample=sample, seed=seed)
    label = f"{bench}/{ps.split}[{offset}:{offset + len(sel) if limit is None else offset + limit}]"
    if sample:
        label += f" sample {sample} seed {seed}"
    if len(sel) == 0:
        raise InputError("no problems selected")
    return sel, label, ps.grader


def _scalar(value: str) -> Any:
    """A number when the text is one (int before float), true / false, else the text (with \\ escapes)."""
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    return _unescape(value)


def _unescape(value: str) -> str:
    import codecs

    try:
        return codecs.decode(value, "unicode_escape") if "\\" in value else value
    except UnicodeDecodeError as exc:
        raise ConfigError(f"bad escape in {value!r}: {exc.reason}") from None


def sampling_opt(text: str | None, flag: str) -> dict[str, Any]:
    """`--llm-sampling temperature=0.6,top_p=0.95,stop=###,extra.chat_template_kwargs=...`: a role's
    sampling keys (`tandem.backends.sampling`), numbers parsed; the settings validate the values."""
    if text is None:
        return {}
    from ..backends.sampling import SAMPLING_KEYS

    out: dict[str, Any] = {}
    for part in (p for p in text.split(",") if p.strip()):
        key, eq, value = part.partition("=")
        key = key.strip()
        if not eq or not key:
            raise ConfigError(f"{flag} {text!r}: use KEY=VALUE pairs, e.g. temperature=0.6,top_p=0.95")
        if key == "stop":
            out.setdefault("stop", []).append(_unescape(value))
        elif key.startswith("extra.") and len(key) > len("extra."):
            out.setdefault("extra_body", {})[key[len("extra."):]] = _scalar(value.strip())
        elif key in SAMPLING_KEYS and key != "extra_body":
            number = _scalar(value.strip())
            if isinstance(number, bool) or not isinstance(number, int | float):
                raise ConfigError(f"{flag}: {key} takes a number, got {value.strip()!r}")
            out[key] = number
        else:
            known = ", ".join(k for k in SAMPLING_KEYS if k != "extra_body")
            raise ConfigError(f"{flag}: unknown sampling key {key!r} (known: {known}, extra.KEY)")
    return out


def role_overrides(config: Path | None, role: str, values: dict[str, Any], sampling: dict[str, Any]) -> dict[str, Any]:
    """The `[llm]` / `[slm]` overrides: `values`, then the sampling values; with these alone (no model
    named here or in the settings file) the role's default model, as without them."""
    if not sampling:
        return values
    if "model" not in values:
        from ..config import DEFAULT_LLM, DEFAULT_SLM, read_settings_file

        section = read_settings_file(Path(config)).get(role) if config else None
        if not (isinstance(section, dict) and "model" in section):
            values = {"model": DEFAULT_LLM if role == "llm" else DEFAULT_SLM, **values}
    return {**values, **sampling}


def _settings(config: Path | None, llm_model: str | None, slm_model: str | None,
              llm_recording: Path | None = None, *, llm_sampling: str | None = None,
              slm_sampling: str | None = None, **pipe: Any) -> Any:
    from ..config import load_settings

    overrides: dict[str, Any] = {"pipeline": {k: v for k, v in pipe.items() if v is not None}}
    llm: dict[str, Any] = {}
    if llm_recording is not None:
        llm = {"kind": "recorded", "model": str(llm_recording)}
    elif llm_model:
        llm = {"model": llm_model}
    llm = role_overrides(config, "llm", llm, sampling_opt(llm_sampling, "--llm-sampling"))
    slm = role_overrides(config, "slm", {"model": slm_model} if slm_model else {},
                         sampling_opt(slm_sampling, "--slm-sampling"))
    if llm:
        overrides["llm"] = llm
    if slm:
        overrides["slm"] = slm
    return load_settings(config, overrides)


def recorded_only(problems: Any, llm: Any, console: Console | None = None) -> Any:
    """The problems the LLM has a recording of, when it replays recordings (else all of them)."""
    from ..backends.recorded import RecordedBackend
    from ..prompts import PromptSet

    if not isinstance(llm, RecordedBackend):
        return problems
    recs = llm.recordings

    kept = [p for p in problems if recs.has(PromptSet(p.task).question_text(p.question), p.id)]
    if not kept:
        raise InputError(f"none of the {len(problems)} selected problems has a recording in {recs.path.name}")
    if console is not None and len(kept) < len(problems):
        console.print(f"{len(kept)} of {len(problems)} selected problems have a recording: running those only")
    return kept


def effort_budgets_opt(text: str | None) -> dict[str, int] | None:
    """`--effort-budgets low=512,medium=1024,high=1536` (any of the three)."""
    if text is None:
        return None
    out: dict[str, int] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, _, value = part.partition("=")
        if name.strip() not in ("low", "medium", "high") or not value.strip().isdigit() or int(value) < 1:
            raise ConfigError(f"--effort-budgets {text!r}: use effort=tokens pairs, e.g. low=512,medium=1024")
        out[name.strip()] = int(value)
    if not out:
        raise ConfigError("--effort-budgets needs at least one effort=tokens pair")
    return out


def _budgets(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        vals = tuple(sorted(int(x) for x in text.split(",") if x.strip()))
    except ValueError:
        raise ConfigError(f"--budgets takes comma-separated integers, got {text!r}") from None
    if not vals or min(vals) <= 0:
        raise ConfigError("--budgets needs positive integers")
    return vals


def _outcomes(run: Path) -> list[Outcome]:
    """The Outcomes a live run stored; a record that is not one is refused in one line."""
    from .store import read_records

    outcomes = []
    for d in read_records(run):
        try:
            outcomes.append(Outcome.from_dict(d))
        except TypeError as exc:
            raise InputError(f"{run}: record {d['key']!r} is not an evaluation outcome ({exc})") from None
    return outcomes


def probe(
    bench: Annotated[str, typer.Argument(help="gsm8k | math | math500 | aime24 | amc23 | humaneval | FILE.jsonl | hf:PATH")],
    out_dir: Annotated[Path, typer.Option("--out", help="run directory (resumed if it exists)")],
    data_dir: DataDir = None, split: Split = None, offset: Offset = 0, limit: Limit = None,
    sample: Sample = None, seed: Seed = 0, config: ConfigOpt = None,
    handover: Annotated[str | None, typer.Option(help="continue | conclude | hint")] = None,
    budgets: Annotated[str | None, typer.Option(help="stage budgets, e.g. 32,64,128,192,256")] = None,
    llm_max_tokens: Annotated[int | None, typer.Option(help="LLM max new tokens")] = None,
    slm_max_tokens: Annotated[int | None, typer.Option(help="SLM max new tokens")] = None,
    trial_tokens: Annotated[int, typer.Option(min=0, help="a trial answer of at most N tokens at every "
                                                          "checkpoint (reasoning LLMs, math; 0: none)")] = 0,
    stop_at_answer: Annotated[bool | None, typer.Option(help="math: stop each model where its boxed answer's "
                                                             "line ends")] = None,
    preset: Preset = None, prompts: Prompts = None,
    llm_model: LlmModel = None, slm_model: SlmModel = None, llm_recording: LlmRecording = None,
    llm_sampling: LlmSampling = None, slm_sampling: SlmSampling = None,
    purpose: Annotated[str | None, typer.Option(help="train | calibration | dev | test: what the table may be used "
                                                     "for (default: by the benchmark split; only test-split "
                                                     "tables marked train or calibration may be fitted on)")] = None,
    fields: Fields = None, hf_config: HfConfig = None, hf_data_files: HfDataFiles = None, task: HfTask = None,
    grader: HfGrader = None,
    concurrency: Annotated[int, typer.Option(min=1, help="problems probed at once: HTTP backends only (an "
                                                       "engine's batching is not bit-identical to serial runs)")] = 1,
) -> None:
    """Record probe tables: the LLM's full stream and the SLM's graded answer at every checkpoint."""
    from ..backends import build_backend
    from ..factory import pipeline_config
    from .graders import get_grader
    from .probe import ProbeConfig
    from .runner import run_probe
    from .store import RunStore

    if purpose not in (None, "train", "calibration", "dev", "test"):
        raise ConfigError(f"--purpose {purpose!r}: use train, calibration, dev or test")
    problems, label, grader_name = _problems(bench, data_dir, split, offset, limit, sample, seed, fields=fields,
                                             hf_config=hf_config, hf_data_files=hf_data_files, task=task,
                                             grader=grader)
    st = _settings(config, llm_model, slm_model, llm_recording, llm_sampling=llm_sampling,
                   slm_sampling=slm_sampling, handover=handover, llm_max_tokens=llm_max_tokens,
                   slm_max_tokens=slm_max_tokens, stage_budgets=_budgets(budgets), stop_at_answer=stop_at_answer,
                   preset=preset, prompts=str(prompts) if prompts else None)
    pc = pipeline_config(st)
    cfg = ProbeConfig(handover=pc.handover, stage_budgets=pc.stage_budgets, max_unit_tokens=pc.max_unit_tokens,
                      decoding=pc.decoding, trial_tokens=trial_tokens, prompts=pc.prompts)
    llm = build_backend(st.llm, models_dir=st.models_dir)
    try:
        problems = recorded_only(problems, llm, err)
        slm = build_backend(st.slm, models_dir=st.models_dir)
    except Exception:
        llm.close()
        raise
    try:
        n = run_probe(problems, llm, slm, get_grader(grader_name), RunStore(out_dir), cfg, dataset=label,
                      grader_name=grader_name, console=err, purpose=purpose, concurrency=concurrency)
    finally:
        llm.close()
        slm.close()
    out.print(f"probed {n} new problem(s) into {out_dir}")


def evaluate(
    bench: Annotated[str, typer.Argument(help="benchmark name (see tandem probe)")],
    out_dir: Annotated[Path, typer.Option("--out", help="run directory (resumed if it exists)")],
    methods: Annotated[str, typer.Option(help="comma-separated: slm, llm, fixed:N, tandem, tandem:EFFORT, route, "
                                              "cascade, cascade:T")] =
    "slm,llm,tandem",
    data_dir: DataDir = None, split: Split = None, offset: Offset = 0, limit: Limit = None,
    sample: Sample = None, seed: Seed = 0, config: ConfigOpt = None,
    effort: Annotated[str | None, typer.Option(help="low | medium | high")] = None,
    handover: Annotated[str | None, typer.Option(help="continue | conclude | hint")] = None,
    classifier: Annotated[str | None, typer.Option(help="default | budget | PATH.json")] = None,
    budgets: Annotated[str | None, typer.Option(help="stage budgets, e.g. 256,512,1024,1536")] = None,
    effort_budgets: EffortBudgets = None, preset: Preset = None, prompts: Prompts = None,
    llm_max_tokens: Annotated[int | None, typer.Option(help="LLM max new tokens")] = None,
    slm_max_tokens: Annotated[int | None, typer.Option(help="SLM max new tokens (its own answer budget)")] = None,
    stop_at_answer: Annotated[bool | None, typer.Option(help="math: stop each model where its boxed answer's "
                                                             "line ends")] = None,
    llm_model: LlmModel = None, slm_model: SlmModel = None, llm_recording: LlmRecording = None,
    llm_sampling: LlmSampling = None, slm_sampling: SlmSampling = None,
    concurrency: Annotated[int, typer.Option(min=1, help="samples in flight at once: HTTP backends only; "
                                                       "above 1, wall times include queueing")] = 1,
    samples: Annotated[int, typer.Option(min=1, help="samples per problem and method, sample i with seed + i "
                                                   "(reports: mean accuracy, pass@k, majority vote)")] = 1,
    fields: Fields = None, hf_config: HfConfig = None, hf_data_files: HfDataFiles = None, task: HfTask = None,
    grader: HfGrader = None,
) -> None:
    """Run methods live on a benchmark, one sample at a time by default (wall time is each method's own)."""
    from ..config import load_settings
    from ..factory import build_tandem
    from .graders import get_grader
    from .runner import run_live
    from .store import RunStore

    problems, label, grader_name = _problems(bench, data_dir, split, offset, limit, sample, seed, fields=fields,
                                             hf_config=hf_config, hf_data_files=hf_data_files, task=task,
                                             grader=grader)
    st = _settings(config, llm_model, slm_model, llm_recording, llm_sampling=llm_sampling,
                   slm_sampling=slm_sampling, effort=effort, handover=handover,
                   stage_budgets=_budgets(budgets), effort_budgets=effort_budgets_opt(effort_budgets), preset=preset,
                   prompts=str(prompts) if prompts else None,
                   llm_max_tokens=llm_max_tokens, slm_max_tokens=slm_max_tokens, stop_at_answer=stop_at_answer)
    if classifier:
        st = load_settings(None, {**st.model_dump(), "classifier": classifier})
    tandem = build_tandem(st)
    try:
        problems = recorded_only(problems, tandem.llm, err)
        n = run_live(problems, tandem, [m.strip() for m in methods.split(",") if m.strip()],
                     get_grader(grader_name), RunStore(out_dir), dataset=label, grader_name=grader_name,
                     effort=effort, console=err, concurrency=concurrency, samples=samples)
    finally:
        tandem.llm.close()
        tandem.slm.close()
    out.print(f"ran {n} new sample(s) into {out_dir}")


def replay_cmd(
    probe_dirs: Annotated[list[Path], typer.Argument(help="probe run directories")],
    out_dir: Annotated[Path, typer.Option("--out", help="where to write the report")],
    methods: Annotated[str | None, typer.Option(help="default: slm, llm, fixed:N per budget, oracle "
                                                     "(+ tandem/route efforts with --classifier)")] = None,
    classifier: Annotated[Path | None, typer.Option(help="classifier JSON for tandem:EFFORT / route")] = None,
    title: Annotated[str, typer.Option(help="report title")] = "tandem replay",
    finished_only: Annotated[bool, typer.Option(help="reasoning LLMs: only the problems whose thought closed "
                                                     "(where the LLM alone is fully known)")] = False,
    complete_only: Annotated[bool, typer.Option(help="reasoning LLMs: only the problems whose thought closed "
                                                     "and whose LLM-alone answer was not cut")] = False,
) -> None:
    """Replay methods from probe tables and write a report (accuracy, FLOPs, Pareto plot)."""
    from .replay_run import replay_dirs
    from .report import write_report

    outcomes, frontier, notes = replay_dirs(probe_dirs, methods, classifier, finished_only=finished_only,
                                            complete_only=complete_only)
    path = write_report(outcomes, out_dir, title, frontier_options=frontier, notes=notes)
    out.print(path.read_text())
    err.print(f"report written to {path}")


def report(
    runs: Annotated[list[Path], typer.Argument(help="run directories (live, or probe: replayed)")],
    out_dir: Annotated[Path, typer.Option("--out", help="where to write report.md and plots")],
    baseline: Annotated[str, typer.Option(help="method to compare with")] = "llm",
    title: Annotated[str, typer.Option(help="report title")] = "tandem report",
) -> None:
    """Join runs by problem id and report each method side by side.

    Runs that hold other problems of the same method (shards) merge; where two runs hold the same
    method on the same problem, the later one's is named `METHOD (RUN)` and both are reported."""
    from .replay_run import replay_dirs
    from .report import join_runs, options_from_outcomes, write_report
    from .store import read_manifest

    groups: list[tuple[str, list[Outcome]]] = []
    probe_dirs: list[Path] = []
    notes: list[str] = []
    for r in runs:
        man = read_manifest(r)
        if man.get("kind") == "probe":
            probe_dirs.append(r)
            continue
        groups.append((r.name, _outcomes(r)))
        if int(man.get("concurrency", 1)) > 1:
            notes.append(f"{r}: {man['concurrency']} samples were in flight at once: its wall times include "
                         "queueing at the endpoints")
    frontier: dict[str, list[tuple[float, bool]]] | None = None
    if probe_dirs:
        replayed, frontier, replay_notes = replay_dirs(probe_dirs, None, None)
        groups.append(("replayed", replayed))
        notes += replay_notes
    outcomes = join_runs(groups)
    if frontier is None and len({o.method for o in outcomes}) > 1:  # live runs only: the oracle over their methods
        frontier = options_from_outcomes(outcomes)
        notes.append("no probe table given: the oracle frontier chooses per problem among the methods run")
    path = write_report(outcomes, out_dir, title, frontier_options=frontier, baseline=baseline, notes=notes)
    out.print(path.read_text())
    err.print(f"report written to {path}")


def agree(
    live_run: Annotated[Path, typer.Argument(help="a live run directory (tandem eval)")],
    probe_dirs: Annotated[list[Path], typer.Argument(help="probe run directories holding the same problems")],
    out_dir: Annotated[Path, typer.Option("--out", help="where to write agreement.md and agreement.json")],
    classifier: Annotated[Path | None, typer.Option(help="the classifier JSON the live run's tandem used "
                                                         "(default: the budget policy)")] = None,
    title: Annotated[str, typer.Option(help="report title")] = "replay against live",
) -> None:
    """Replay a live run's methods from probe tables and say where they agree (answers, hand-over, tokens)."""
    import json

    from .agreement import agreement_by_method, pair_outcomes, render_agreement, replay_for, summary_json
    from .store import read_manifest

    man = read_manifest(live_run)
    if man.get("kind") != "live":
        raise InputError(f"{live_run} is not a live run (tandem eval)")
    live = _outcomes(live_run)
    policy = rule = None
    ran_tandem = any(o.method in ("tandem", "route", "cascade") or o.method.startswith("tandem:") for o in live)
    if classifier is not None:
        from ..classifier import load_classifier

        clf = load_classifier(classifier)
        clf.check_models(man["llm"], man["slm"])
        policy, rule = clf, clf.stop_rule()
    elif ran_tandem and man.get("policy", "budget") != "budget":
        raise ConfigError(f"the live run's tandem used the policy {man.get('policy')!r}: pass its --classifier")
    effort = man.get("effort") or "medium"
    replayed = replay_for(live, probe_dirs, effort, policy, rule, live_manifest=man)
    checks, skipped = pair_outcomes(live, replayed, effort)
    rows = agreement_by_method(checks)
    notes = [f"live run {live_run} ({man.get('dataset')}, effort {effort}, policy {man.get('policy')}); "
             f"probe tables: {', '.join(str(d) for d in probe_dirs)}",
             "live wall time is measured end to end; replayed wall time is summed from the probe's measured "
             "parts, under the probe's own threads and load"]
    out_dir.mkdir(parents=True, exist_ok=True)
    text = render_agreement(rows, checks, skipped, title, notes)
    (out_dir / "agreement.md").write_text(text)
    (out_dir / "agreement.json").write_text(json.dumps(summary_json(rows, skipped), indent=2) + "\n")
    out.print(text)
    err.print(f"written to {out_dir / 'agreement.md'}")


def register(app: typer.Typer) -> None:
    app.command("probe")(probe)
    app.command("eval")(evaluate)
    app.command("replay")(replay_cmd)
    app.command("report")(report)
    app.command("agree")(agree)
