"""What every stand-in answers alike: OpenAI-shaped completion, chat, stream and error bodies, and
the log line format.  Stdlib only (it runs on agentless boxes)."""

from __future__ import annotations

import hashlib
import json
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from .http import Response


def log(msg: str) -> None:
    sys.stderr.write(time.strftime("%H:%M:%S ") + msg + "\n")
    sys.stderr.flush()


def words(text: str, n: int = 6) -> str:
    return " ".join(text.split()[:n])


def last_user_text(body: dict[str, Any]) -> str:
    if "messages" in body:
        for m in reversed(body.get("messages") or []):
            if isinstance(m, dict) and m.get("role") == "user":
                c = m.get("content")
                return c if isinstance(c, str) else json.dumps(c)
        return ""
    p = body.get("prompt", "")
    return p if isinstance(p, str) else json.dumps(p)


def embedding(text: str, dims: int = 8) -> list[float]:
    h = hashlib.sha256(text.encode()).digest()
    return [round((b - 128) / 128, 4) for b in h[:dims]]


def completion(model: str, body: dict[str, Any], chat: bool, note: str = "", finish: str = "stop") -> dict[str, Any]:
    text = f"{note}[{model}] {words(last_user_text(body)) or 'hello'}"
    usage = {"prompt_tokens": len(last_user_text(body).split()), "completion_tokens": len(text.split())}
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    cid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:16]
    if chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
        return {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": model, "choices": [choice], "usage": usage}
    choice = {"index": 0, "text": text, "finish_reason": finish}
    return {"id": cid, "object": "text_completion", "created": int(time.time()), "model": model, "choices": [choice], "usage": usage}


def stream_chat(model: str, body: dict[str, Any], note: str = "", delay: float = 0.0,
                gate: Callable[[], bool] | None = None, on_done: Callable[[], None] | None = None) -> Iterator[bytes]:
    """An SSE chat stream, one word per chunk.  ``gate`` runs before each chunk: it may block (a
    request frozen by a sleep) and returns False when the request was aborted, which ends the
    stream with ``finish_reason: "abort"``, as vLLM ends a request that ``/sleep?mode=abort`` cut
    off.  ``on_done`` runs when the stream ends however it ends (the request is no longer in flight)."""
    text = f"{note}[{model}] {words(last_user_text(body)) or 'hello'}"
    cid = "chatcmpl-" + uuid.uuid4().hex[:16]
    created = int(time.time())

    def chunk(delta: dict[str, Any], finish: str | None) -> bytes:
        c = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
             "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return b"data: " + json.dumps(c).encode() + b"\n\n"

    try:
        yield chunk({"role": "assistant", "content": ""}, None)
        for word in text.split(" "):
            if delay:
                time.sleep(delay)
            if gate is not None and not gate():
                yield chunk({}, "abort")
                yield b"data: [DONE]\n\n"
                return
            yield chunk({"content": word + " "}, None)
        yield chunk({}, "stop")
        yield b"data: [DONE]\n\n"
    finally:
        if on_done is not None:
            on_done()


def oai_error(status: int, message: str, type_: str, param: str | None = None) -> Response:
    return Response(status, {"error": {"message": message, "type": type_, "param": param, "code": status}})
