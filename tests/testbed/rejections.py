"""The plugin's documented rejections: status 503, a JSON body with a code."""

from __future__ import annotations

import json

DOCUMENTED_CODES = ("no_healthy_instance", "instance_deregistered", "registry_unavailable")


def assert_rejection(resp, code: str = "no_healthy_instance", status: int = 503) -> None:
    assert resp.status == status, resp
    assert resp.headers.get("content-type", "").startswith("application/json"), resp.headers
    body = resp.json()
    assert body["code"] == code, body
    assert body["service"] == "demo", body
    assert body["group"] == "DEFAULT_GROUP", body
    assert isinstance(body.get("message"), str) and body["message"], body


def label(status: int, ctype: str, body: bytes) -> str:
    """What an answer was: the backend's name (200), the documented rejection's code, or
    the start of the body."""
    text = body.decode(errors="replace")
    if status == 200:
        return text
    if status == 503 and ctype.startswith("application/json"):
        try:
            doc = json.loads(text)
        except ValueError:
            return text[:200]
        if isinstance(doc, dict) and doc.get("code") in DOCUMENTED_CODES and doc.get("service") == "demo":
            return doc["code"]
    return text[:200]
