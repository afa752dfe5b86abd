"""`tandem recordings check FILE`: validate a recordings file before probing with it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

out = Console()

recordings_app = typer.Typer(help="Recorded LLM outputs (the `recorded` backend).", no_args_is_help=True)


@recordings_app.command("check")
def check(
    path: Annotated[Path, typer.Argument(help="recordings JSONL file")],
    tokenizer: Annotated[str, typer.Option(help="tokenizer for token counts: an embedded model's name, a GGUF "
                                                "path, 'words', or 'none'")] = "qwen2.5-coder-0.5b",
    bench: Annotated[str | None, typer.Option(help="also match ids and questions against this benchmark "
                                                   "(e.g. gsm8k)")] = None,
    split: Annotated[str | None, typer.Option(help="the benchmark's split")] = None,
    data_dir: Annotated[str | None, typer.Option(help="benchmark data directory (default: $TANDEM_DATA_DIR)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Validate every line (one clear error naming the first bad line) and summarise the file."""
    from ..backends.recorded import check_recordings
    from ..backends.tokenizers import load_tokenizer

    tok = None if tokenizer == "none" else load_tokenizer(tokenizer)
    questions = None
    if bench:
        from .datasets import load_benchmark

        questions = {p.id: p.question for p in load_benchmark(bench, data_dir, split)}
    summary = check_recordings(path, tok, questions)
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    for key, value in summary.items():
        out.print(f"{key:>26}: {value}", highlight=False, soft_wrap=True)
    out.print("ok", style="green")


def register(app: typer.Typer) -> None:
    app.add_typer(recordings_app, name="recordings")
