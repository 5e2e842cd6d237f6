"""An OpenAI-compatible chat-completions server for a local Hugging Face model, with log-probs.

    python -m evaluation.judge_server --model <directory or hub id> [--port 8000] [--name NAME] [--log FILE]

It serves ``GET /v1/models`` and ``POST /v1/chat/completions``: the messages rendered with the
model's own chat template, greedy at temperature 0 and sampled otherwise, ``max_tokens``,
``stop``, and ``logprobs``/``top_logprobs`` of every generated token (what AlpacaEval's
weighted GPT-4-turbo format reads). Any causal LM can judge through it, on a CPU or one GPU;
``make test`` runs SmolLM2-135M-Instruct through both judge formats this way. (``transformers
serve`` refuses ``logprobs``; vLLM, ``slurm/serve_judge.sh``, is the server for a 70B judge.)
Requests are answered one at a time; ``--log`` appends each prompt and answer to a JSONL file (what
the judge actually said, also for verdicts no parser could read). The URL is printed once the
model is loaded: ``serving <name> at http://127.0.0.1:<port>/v1``.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


class LocalJudge:
    """A model and tokenizer answering chat-completion requests (the protocol's JSON in and out)."""

    def __init__(
        self, model: str, name: str | None = None, device: str | None = None, log: str | None = None
    ):
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=dtype).to(self.device).eval()
        self.name = name or model.rstrip("/").split("/")[-1]
        self.lock = threading.Lock()
        self.log = log

    def complete(self, body: dict) -> dict:
        messages = [{"role": m["role"], "content": m["content"]} for m in body["messages"]]
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        inputs = self.tokenizer(text, return_tensors="pt", add_special_tokens=False).to(self.device)
        temperature = float(body.get("temperature", 1.0) or 0.0)
        sampling = (
            dict(do_sample=True, temperature=temperature, top_p=float(body.get("top_p", 1.0)))
            if temperature > 0
            else dict(do_sample=False)
        )
        stop = body.get("stop")
        with self.lock, torch.no_grad():
            if "seed" in body:
                torch.manual_seed(int(body["seed"]))
            out = self.model.generate(
                **inputs,
                max_new_tokens=int(body.get("max_tokens") or 256),
                output_logits=True,
                return_dict_in_generate=True,
                pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
                stop_strings=[stop] if isinstance(stop, str) else stop,
                tokenizer=self.tokenizer,
                **sampling,
            )
        ids = out.sequences[0, inputs["input_ids"].shape[1] :].tolist()
        finish = "length" if len(ids) >= int(body.get("max_tokens") or 256) else "stop"
        if ids and ids[-1] == self.tokenizer.eos_token_id:
            ids = ids[:-1]
        message = {"role": "assistant", "content": self.tokenizer.decode(ids, skip_special_tokens=True)}
        choice = {"index": 0, "message": message, "finish_reason": finish, "logprobs": None}
        if body.get("logprobs"):
            choice["logprobs"] = {
                "content": self._logprobs(out.logits, ids, int(body.get("top_logprobs") or 0))
            }
        prompt_tokens = int(inputs["input_ids"].shape[1])
        if self.log:
            with self.lock, open(self.log, "a") as f:
                f.write(json.dumps({"messages": messages, "content": message["content"]}) + "\n")
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.name,
            "choices": [choice],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": len(ids),
                "total_tokens": prompt_tokens + len(ids),
            },
        }

    def _logprobs(self, logits, ids: list[int], top: int) -> list[dict]:
        """Each generated token's log-prob and the ``top`` most likely tokens at its position."""

        def entry(token_id: int, logprob: float) -> dict:
            token = self.tokenizer.decode([token_id])
            return {"token": token, "logprob": logprob, "bytes": list(token.encode())}

        content = []
        for step, token_id in enumerate(ids):
            logprobs = torch.log_softmax(logits[step][0].float(), dim=-1)
            item = entry(token_id, float(logprobs[token_id]))
            values, indices = (
                logprobs.topk(top) if top else (torch.empty(0), torch.empty(0, dtype=torch.long))
            )
            item["top_logprobs"] = [entry(int(i), float(v)) for v, i in zip(values, indices)]
            content.append(item)
        return content


def serve(judge: LocalJudge, port: int = 8000, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """A started server (in a thread) for ``judge``; ``server.server_address`` gives the port."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _send(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path.rstrip("/").endswith("/v1/models"):
                self._send(200, {"object": "list", "data": [{"id": judge.name, "object": "model"}]})
            else:
                self._send(404, {"error": {"message": f"no route {self.path}"}})

        def do_POST(self):
            if not self.path.rstrip("/").endswith("/v1/chat/completions"):
                self._send(404, {"error": {"message": f"no route {self.path}"}})
                return
            try:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                self._send(200, judge.complete(body))
            except (KeyError, ValueError, TypeError) as e:
                self._send(
                    400, {"error": {"message": f"{type(e).__name__}: {e}", "type": "invalid_request_error"}}
                )

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a model directory or hub id")
    parser.add_argument("--name", help="the model id it reports (default: the directory's name)")
    parser.add_argument("--port", type=int, default=8000, help="0: any free port")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--log", help="append every prompt and answer to this JSONL file")
    a = parser.parse_args()
    judge = LocalJudge(a.model, a.name, log=a.log)
    server = serve(judge, a.port, a.host)
    print(f"serving {judge.name} at http://{a.host}:{server.server_address[1]}/v1", flush=True)
    threading.Event().wait()  # until killed


if __name__ == "__main__":
    main()
