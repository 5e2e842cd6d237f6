"""A STAND-IN for an AlpacaEval judge: an OpenAI-compatible HTTP server on 127.0.0.1.

It speaks the chat-completions protocol the real judges speak (GPT-4-turbo with log-probs,
Llama-3-70B-Instruct behind vLLM returning a ranking) so that the real alpaca_eval client and
the project's judge configs run end to end in tests. Its verdict is a fixed rule (the longer
answer wins), not a judgement: it tests plumbing, not quality; an instruction containing
"[malformed]" gets a verdict no parser can read, so the accounting of failures can be checked
exactly. A real model judges through both formats in tests/integration/test_judges.py; the real
judges stay documented in evaluation/judges/ and docs/evaluation.md.
"""

from __future__ import annotations

import json
import math
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODEL = "stand-in-judge"


class _Handler(BaseHTTPRequestHandler):
    requests_seen: list = []

    def log_message(self, *args):  # keep test output quiet
        pass

    def _send(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path.rstrip("/").endswith("/models"):
            self._send(200, {"object": "list", "data": [{"id": MODEL, "object": "model"}]})
        else:
            self._send(404, {"error": {"message": f"no route {self.path}"}})

    def do_POST(self):
        if not self.path.rstrip("/").endswith("/chat/completions"):
            self._send(404, {"error": {"message": f"no route {self.path}"}})
            return
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.requests_seen.append(body)
        prompt = "\n".join(m["content"] for m in body["messages"] if isinstance(m.get("content"), str))
        blocks = re.findall(r'"""(.*?)"""', prompt, flags=re.S)  # instruction, output 1, output 2
        first_wins = len(blocks) >= 3 and len(blocks[1]) >= len(blocks[2])
        message = {"role": "assistant"}
        choice = {"index": 0, "finish_reason": "stop", "message": message}
        if "[malformed]" in prompt:
            message["content"] = "Both answers have merits."
            if body.get("logprobs"):
                other = {"token": "Both", "logprob": -0.1, "bytes": None, "top_logprobs": []}
                choice["logprobs"] = {"content": [other]}
        elif body.get("logprobs"):  # GPT-4-turbo weighted annotator: identifiers "m" (first) and "M"
            p = 0.9 if first_wins else 0.1
            message["content"] = "m" if first_wins else "M"
            top = [
                {"token": "m", "logprob": math.log(p), "bytes": None},
                {"token": "M", "logprob": math.log(1 - p), "bytes": None},
            ]
            choice["logprobs"] = {
                "content": [
                    {
                        "token": message["content"],
                        "logprob": top[0 if first_wins else 1]["logprob"],
                        "bytes": None,
                        "top_logprobs": top,
                    }
                ]
            }
        else:  # ranking format of the Llama-3-70B config
            r1, r2 = (1, 2) if first_wins else (2, 1)
            message["content"] = (
                f"[{{'model': 'model_1', 'rank': {r1}}}, {{'model': 'model_2', 'rank': {r2}}}]"
            )
        self._send(
            200,
            {
                "id": "standin",
                "object": "chat.completion",
                "created": 0,
                "model": body.get("model", MODEL),
                "choices": [choice],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            },
        )


class StandinJudge:
    """``with StandinJudge() as url:`` serves on a free port of 127.0.0.1 and yields its /v1 URL."""

    def __enter__(self) -> str:
        _Handler.requests_seen = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    @property
    def requests(self) -> list:
        return _Handler.requests_seen

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
