"""A fake OpenAI-compatible judge on 127.0.0.1: real HTTP, the real ``openai`` client on the other side.

    POST /v1/chat/completions   reads the judging template (tuning.judge.JUDGE_TEMPLATE) and answers a verdict

``policy`` picks the verdict from the two answers it was shown: "always_a" (a judge blind to content that
always prefers the first position), "longer" (the longer answer wins; equal lengths tie) or "garbled"
(a reply that names no verdict). ``requests`` records each request's Authorization header and model.
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ANSWERS = re.compile(r"\[Answer A\]\n(?P<a>.*)\n\n\[Answer B\]\n(?P<b>.*)\n\nWhich answer", re.DOTALL)


def verdict(policy: str, answer_a: str, answer_b: str) -> str:
    if policy == "always_a":
        return "A"
    if policy == "garbled":
        return "I cannot decide between these."
    if len(answer_a) == len(answer_b):
        return "tie"
    return "A" if len(answer_a) > len(answer_b) else "B"


class JudgeServer:
    def __init__(self, policy: str = "longer"):
        self.policy = policy
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                server.requests.append({"path": self.path, "authorization": self.headers.get("Authorization"),
                                        "model": body.get("model")})
                if self.path != "/v1/chat/completions":
                    self.send_response(404)
                    self.end_headers()
                    return
                found = ANSWERS.search(body["messages"][-1]["content"])
                text = verdict(server.policy, found["a"], found["b"]) if found else "no template"
                payload = json.dumps({
                    "id": "judge-1", "object": "chat.completion", "created": 0, "model": body.get("model"),
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": text}}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "JudgeServer":
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
