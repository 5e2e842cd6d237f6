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

import math
import re

from evaluation.judge_server import serve

MODEL = "stand-in-judge"


class RuleJudge:
    """The stand-in's judgement: a fixed rule answering the chat-completions body it is given,
    served through evaluation.judge_server's HTTP layer like a real model."""

    name = MODEL

    def __init__(self):
        self.requests: list[dict] = []

    def complete(self, body: dict) -> dict:
        self.requests.append(body)
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
        return {
            "id": "standin",
            "object": "chat.completion",
            "created": 0,
            "model": body.get("model", MODEL),
            "choices": [choice],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }


class StandinJudge:
    """``with StandinJudge() as url:`` serves on a free port of 127.0.0.1 and yields its /v1 URL."""

    def __init__(self):
        self.judge = RuleJudge()

    def __enter__(self) -> str:
        self.server = serve(self.judge, port=0)
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    @property
    def requests(self) -> list:
        return self.judge.requests

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
