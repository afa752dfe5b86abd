"""Convert a GGUF model file into a plain Hugging Face folder (safetensors, config, tokenizer with its
chat template) that vLLM can load: vLLM 0.32 has no GGUF loader.

Run it with the vLLM environment's python (scripts/vllm_env.sh prints it):

    .venv-vllm/bin/python scripts/gguf_to_hf.py MODEL.gguf CACHE_DIR [--dtype bfloat16]

The folder is CACHE_DIR/<first 16 hex digits of the GGUF's sha256>-<dtype>; a second run with the
same file finds it and converts nothing. The path of the folder is the only line on stdout.
Conversion writes into a temporary folder beside it and renames it when complete, under a lock, so
an interrupted or concurrent run never leaves a half-written folder in the cache.

The weights are dequantised by transformers (`from_pretrained(..., gguf_file=...)`) and stored in
`--dtype` (bfloat16 by default, what the server computes in); they are the GGUF's quantised values,
so vLLM serves the same model llama.cpp serves from the GGUF, up to the precision of the kernels.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def convert(gguf: Path, out: Path, dtype: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = getattr(torch, dtype)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch_dtype)
    # the weights are already dequantised: a GGUF quantizer left on the model would make
    # save_pretrained refuse (or write a quantization_config that vLLM cannot load)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.dtype = torch_dtype
    model.save_pretrained(str(out), safe_serialization=True)
    tok.save_pretrained(str(out))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("gguf", type=Path, help="the GGUF model file")
    ap.add_argument("cache_dir", type=Path, help="where converted folders are kept")
    ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    args = ap.parse_args(argv)
    gguf: Path = args.gguf.resolve()
    if not gguf.is_file():
        print(f"error: GGUF file not found: {gguf}", file=sys.stderr)
        return 2
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    digest = sha256_of(gguf)
    target = args.cache_dir.resolve() / f"{digest[:16]}-{args.dtype}"
    lock_path = args.cache_dir / ".convert.lock"
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / "tandem-conversion.json").is_file():
            print(str(target))
            return 0
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=args.cache_dir))
        try:
            convert(gguf, tmp, args.dtype)
            (tmp / "tandem-conversion.json").write_text(json.dumps({
                "source": gguf.name, "sha256": digest, "dtype": args.dtype,
                "seconds": round(time.perf_counter() - t0, 1),
            }, indent=2) + "\n")
            if target.exists():  # an incomplete folder from an older layout
                shutil.rmtree(target)
            tmp.rename(target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    print(f"converted {gguf.name} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    print(str(target))
    return 0


if __name__ == "__main__":
    sys.exit(main())
