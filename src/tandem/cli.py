"""The `tandem` command line. Nothing heavy is imported or created until a command runs."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .bench.commands import SAMPLING_HELP
from .errors import InputError, TandemError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="LLM + SLM in tandem for cheaper reasoning.")
models_app = typer.Typer(no_args_is_help=True, help="Install and list the embedded GGUF models.")
app.add_typer(models_app, name="models")

out = Console()
err = Console(stderr=True)


def _show_version(value: bool) -> None:
    if value:
        from . import __version__

        out.print(f"tandem {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_show_version, is_eager=True,
                                          help="Show the version and exit.")] = False,
) -> None:
    """LLM + SLM in tandem for cheaper reasoning."""


def _print_error(message: str) -> None:
    """One line on stderr, however long or whatever it holds (no wrapping, no markup read from it)."""
    line = " ".join(part.strip() for part in str(message).splitlines() if part.strip())
    err.print(Text.assemble(("error:", "bold red"), " ", line), soft_wrap=True, highlight=False)


def _fail(message: str, code: int = 2) -> None:
    _print_error(message)
    raise typer.Exit(code)


# ---- models -------------------------------------------------------------------------------------
@models_app.command("pull")
def models_pull(
    names: Annotated[list[str] | None, typer.Argument(help="models to install (default: the embedded pair)")] = None,
    models_dir: Annotated[str | None, typer.Option(help="where models live (default: user cache)")] = None,
    force: Annotated[bool, typer.Option(help="download again even if installed")] = False,
) -> None:
    """Download, assemble and verify model files (pinned by sha256)."""
    from .config import DEFAULT_LLM, DEFAULT_SLM
    from .models import pull

    for name in names or [DEFAULT_LLM, DEFAULT_SLM]:
        path = pull(name, models_dir, force=force, progress=lambda m: err.print(f"[dim]{m}[/]"))
        out.print(f"[green]ok[/] {name} -> {path}")


@models_app.command("list")
def models_list(models_dir: Annotated[str | None, typer.Option(help="models directory")] = None) -> None:
    """Show the registered models, whether they are installed, and their checksum status."""
    from .models import list_models

    table = Table("name", "installed", "size", "checksum", "path")
    for m in list_models(models_dir):
        size = f"{m.size / 1e6:,.0f} MB" if m.size else "-"
        table.add_row(m.name, "yes" if m.installed else "no", size, m.status, str(m.path))
    out.print(table)


@models_app.command("verify")
def models_verify(
    names: Annotated[list[str] | None, typer.Argument(help="models to check (default: every installed one)")] = None,
    models_dir: Annotated[str | None, typer.Option(help="models directory")] = None,
    full: Annotated[bool, typer.Option(help="hash every file again, trusting no recorded checksum")] = False,
) -> None:
    """Check installed models against their pinned sha256; exit 2 if one does not match."""
    from .errors import ModelError
    from .models import verify_installed

    found = verify_installed(names or (), models_dir, full=full)
    for m in found:
        out.print(Text.assemble((m.status, "green" if m.status == "ok" else "red"), f"  {m.name}  {m.path}"),
                  highlight=False, soft_wrap=True)
    if not found:
        out.print("no model is installed")
    bad = [m for m in found if m.status != "ok"]
    if bad:
        what = ", ".join(f"{m.name} ({'not installed' if m.status == 'missing' else 'sha256 mismatch'})" for m in bad)
        raise ModelError(f"{what}: run `tandem models pull --force NAME` to install it again")


# ---- solve --------------------------------------------------------------------------------------
MAX_QUESTION_BYTES = 16 << 20  # a question read from a file or stdin (/dev/zero would never end)


def _decode_question(data: bytes, source: str) -> str:
    if len(data) > MAX_QUESTION_BYTES:
        raise InputError(f"the question in {source} is larger than {MAX_QUESTION_BYTES >> 20} MiB")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"the question in {source} is not UTF-8 text (byte {exc.start}: {exc.reason})") from None


def _read_question_file(file: Path) -> str:
    """A regular file, or a pipe such as `-f <(command)`; not a directory."""
    if file.is_dir():
        raise InputError(f"question file {file} is a directory")
    try:
        with open(file, "rb") as fh:
            data = fh.read(MAX_QUESTION_BYTES + 1)
    except FileNotFoundError:
        raise InputError(f"question file not found: {file}") from None
    except OSError as exc:
        raise InputError(f"cannot read question file {file}: {exc.strerror or exc}") from None
    return _decode_question(data, str(file))


def _read_question(question: str | None, file: Path | None) -> str:
    if file is not None:
        text = _read_question_file(file)
    elif question is not None and question != "-":
        text = question
    elif not sys.stdin.isatty():
        stdin = getattr(sys.stdin, "buffer", None)
        text = (_decode_question(stdin.read(MAX_QUESTION_BYTES + 1), "stdin") if stdin is not None
                else sys.stdin.read())
    else:
        raise InputError("no question: pass it as an argument, with --file, or on stdin")
    if not text.strip():
        raise InputError("the question is empty")
    return text


def _backend_overrides(prefix: str, model: str | None, base_url: str | None, key_env: str | None,
                       n_params: int | None) -> dict[str, Any]:
    d: dict[str, Any] = {}
    if base_url:
        d.update(kind="openai", base_url=base_url)
    if model:
        d["model"] = model
    if key_env:
        d["api_key_env"] = key_env
    if n_params:
        d["n_params"] = n_params
    return d


class _Printer:
    """Human output: streams insights, checkpoint decisions and the SLM's text as they happen."""

    def __init__(self, console: Console) -> None:
        self.c = console
        self.role: str | None = None

    def __call__(self, event: str, payload: dict[str, Any]) -> None:
        if event in ("llm_token", "slm_token"):
            role = event.split("_")[0]
            if role != self.role:
                self.c.print(f"\n[bold {'cyan' if role == 'llm' else 'green'}]── {role.upper()} ──[/]")
                self.role = role
            self.c.print(payload["text"], end="", style="cyan" if role == "llm" else None, highlight=False,
                         markup=False)
        elif event == "checkpoint":
            verdict = "hand over" if payload["handover"] else "continue"
            self.c.print(
                f"\n[yellow]◆ checkpoint {payload['stage']} @ {payload['llm_tokens']} LLM tokens: "
                f"p={payload['probability']:.2f} (threshold {payload['threshold']:.2f}) → {verdict} "
                f"({payload['reason']})[/]"
            )
            self.role = None
        elif event == "handover":
            who = "the SLM solves alone" if not payload["llm_tokens"] else \
                f"the LLM is stopped after {payload['llm_tokens']} tokens and the SLM takes over"
            self.c.print(f"\n[bold magenta]▶ hand-over ({payload['reason']}): {who}[/]")
            self.role = None


def _cost_table(results: dict[str, Any]) -> Table:
    t = Table("method", "LLM tokens (prompt/gen)", "SLM tokens (prompt+shadow/gen)", "TFLOPs total",
              "TFLOPs generated", "wall s", "answer")
    for name, r in results.items():
        c = r.cost
        llm, slm = c.models.get("llm"), c.models.get("slm")
        t.add_row(
            name,
            f"{llm.input_tokens}/{llm.generated_tokens}" if llm else "-",
            f"{slm.input_tokens}/{slm.generated_tokens}" if slm else "-",
            f"{c.flops_total / 1e12:.3f}", f"{c.flops_generated / 1e12:.3f}", f"{c.wall_seconds:.1f}",
            str(r.answer.answer),
        )
    return t


@app.command()
def solve(
    question: Annotated[str | None, typer.Argument(help="the problem ('-' or omitted: read stdin)")] = None,
    file: Annotated[Path | None, typer.Option("--file", "-f", help="read the problem from a file")] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="TOML/YAML settings file")] = None,
    mode: Annotated[str, typer.Option(help="tandem | slm | llm | fixed:N")] = "tandem",
    effort: Annotated[str | None, typer.Option(help="low | medium | high")] = None,
    handover: Annotated[str | None, typer.Option(help="continue | conclude | hint")] = None,
    task: Annotated[str | None, typer.Option(help="math | code")] = None,
    classifier: Annotated[str | None, typer.Option(help="default | budget | PATH.json")] = None,
    llm_model: Annotated[str | None, typer.Option(help="LLM: registry name, GGUF path or served name")] = None,
    llm_base_url: Annotated[str | None, typer.Option(help="LLM: OpenAI-compatible base URL")] = None,
    llm_api_key_env: Annotated[str | None, typer.Option(help="LLM: env var holding its API key")] = None,
    llm_params: Annotated[int | None, typer.Option(help="LLM: parameter count (HTTP backends)")] = None,
    slm_model: Annotated[str | None, typer.Option(help="SLM: registry name, GGUF path or served name")] = None,
    slm_base_url: Annotated[str | None, typer.Option(help="SLM: OpenAI-compatible base URL")] = None,
    slm_api_key_env: Annotated[str | None, typer.Option(help="SLM: env var holding its API key")] = None,
    slm_params: Annotated[int | None, typer.Option(help="SLM: parameter count (HTTP backends)")] = None,
    llm_max_tokens: Annotated[int | None, typer.Option(help="LLM max new tokens")] = None,
    slm_max_tokens: Annotated[int | None, typer.Option(help="SLM max new tokens")] = None,
    temperature: Annotated[float | None, typer.Option(help="sampling temperature (0 = greedy)")] = None,
    seed: Annotated[int | None, typer.Option(help="sampling seed")] = None,
    budgets: Annotated[str | None, typer.Option(help="stage budgets, e.g. 256,512,1024,1536")] = None,
    effort_budgets: Annotated[str | None, typer.Option(
        help="each effort's largest budget in LLM tokens, e.g. low=512,medium=1024,high=1536")] = None,
    preset: Annotated[str | None, typer.Option(help="defaults for a kind of LLM: reasoning")] = None,
    prompts: Annotated[Path | None, typer.Option(help="a TOML/YAML file of prompt wordings")] = None,
    stop_at_answer: Annotated[bool | None, typer.Option(
        help="math: stop each model where its boxed answer's line ends")] = None,
    llm_recording: Annotated[Path | None, typer.Option(
        help="LLM: a recordings JSONL file replayed as its stream (docs/reasoning.md)")] = None,
    llm_sampling: Annotated[str | None, typer.Option(help=f"LLM {SAMPLING_HELP}")] = None,
    slm_sampling: Annotated[str | None, typer.Option(help=f"SLM {SAMPLING_HELP}")] = None,
    models_dir: Annotated[str | None, typer.Option(help="models directory")] = None,
    compare: Annotated[bool, typer.Option(help="also run the LLM alone and compare")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Solve one problem with the LLM and the SLM in tandem and show what it cost."""
    from . import capabilities
    from .config import load_settings
    from .decision import HandoverContext
    from .factory import build_tandem

    text = _read_question(question, file)
    from .bench.commands import _budgets, effort_budgets_opt, role_overrides, sampling_opt

    pipe = {k: v for k, v in dict(effort=effort, handover=handover, task=task, llm_max_tokens=llm_max_tokens,
                                   slm_max_tokens=slm_max_tokens, temperature=temperature, seed=seed,
                                   stage_budgets=_budgets(budgets), effort_budgets=effort_budgets_opt(effort_budgets),
                                   preset=preset, stop_at_answer=stop_at_answer,
                                   prompts=str(prompts) if prompts else None).items()
            if v is not None}
    overrides: dict[str, Any] = {"pipeline": pipe}
    llm = _backend_overrides("llm", llm_model, llm_base_url, llm_api_key_env, llm_params)
    if llm_recording is not None:
        llm = {"kind": "recorded", "model": str(llm_recording)}
    slm = _backend_overrides("slm", slm_model, slm_base_url, slm_api_key_env, slm_params)
    llm = role_overrides(config, "llm", llm, sampling_opt(llm_sampling, "--llm-sampling"))
    slm = role_overrides(config, "slm", slm, sampling_opt(slm_sampling, "--slm-sampling"))
    if llm:
        overrides["llm"] = llm
    if slm:
        overrides["slm"] = slm
    if classifier:
        overrides["classifier"] = classifier
    if models_dir:
        overrides["models_dir"] = models_dir
    settings = load_settings(config, overrides)
    tandem = build_tandem(settings)
    try:
        hook = None if as_json else _Printer(out)
        results = {mode: tandem.solve(text, method=mode, on_event=hook)}
        if compare and mode != "llm":
            if hook:
                out.print("\n[bold]── LLM alone (--compare) ──[/]")
            for b in (tandem.llm, tandem.slm):  # a cold cache, as the tandem run had
                capabilities.reset_cache(b)
            results["llm"] = tandem.solve(text, method="llm", on_event=hook)
    finally:
        tandem.llm.close()
        tandem.slm.close()
    if as_json:
        payload = {k: v.to_dict() for k, v in results.items()}
        print(json.dumps(payload if compare else payload[mode], indent=2, default=str))
        return
    main_result = results[mode]
    out.print(f"\n\n[bold]answer:[/] {main_result.answer.answer}  [dim](rule: {main_result.answer.rule}; "
              f"stop: {main_result.stop_reason})[/]")
    out.print(_cost_table(results))
    cfg = tandem.config
    if tandem.llm.info.capabilities.wall_time == "none":
        err.print("[dim]note: the LLM replays a recording: its wall time is unknown, and 'wall s' leaves it out[/]")
    if mode == "tandem" and HandoverContext(tandem.rule, cfg.effort, cfg.handover, tandem.llm.info.thinks).llm_alone:
        err.print(f"[dim]note: effort {cfg.effort} runs as the LLM alone: its classifier ({tandem.policy.name}) "
                  "was calibrated to hand over only where that pays, and found no such point; see "
                  "docs/RESULTS.md, or --effort low to trade accuracy for cost[/]")


@app.command()
def serve(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="TOML/YAML settings file")] = None,
    host: Annotated[str | None, typer.Option(help="address to listen on (default: server.host, 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="port (default: server.port, 8000)")] = None,
    api_key_env: Annotated[str | None, typer.Option(
        help="environment variable holding the accepted API key(s), comma-separated")] = None,
) -> None:
    """Serve an OpenAI-compatible API: chat completions, models, health and metrics."""
    from .server import serve as run_server

    run_server(config, host=host, port=port, api_key_env=api_key_env)


def _register_subcommands() -> None:
    from .bench.commands import register
    from .bench.recordings_cmd import register as register_recordings
    from .train.commands import register as register_train

    register(app)
    register_recordings(app)
    register_train(app)


_register_subcommands()


def main() -> None:
    """Entry point: project errors become one clear line and exit code 2, never a traceback."""
    try:
        app(prog_name="tandem")
    except TandemError as exc:
        _print_error(str(exc))
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
