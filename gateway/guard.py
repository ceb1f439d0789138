"""Safety on the request path: personal data and jailbreak attempts, detected locally, handled
as the team's policy says (allow or log, redact, block, or route to members with a tag)."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gateway.errors import GatewayError
from gateway.routing_service import Analysis
from routing import pii
from routing.features import content_text
from routing.policy import Policy

PII_SAFE_TAG = "pii-safe"
HARDENED_TAG = "hardened"


@dataclass
class SafetyOutcome:
    redactor: pii.Redactor | None = None  # set when the prompt was redacted
    required_tags: set[str] = field(default_factory=set)


def _request_text(body: dict) -> str:
    """Every message's text (or the completion prompt), one part per line."""
    if "messages" in body:
        return "\n".join(content_text(m["content"]) for m in body["messages"]
                         if isinstance(m.get("content"), str | list))
    prompt = body.get("prompt")
    return prompt if isinstance(prompt, str) else "\n".join(str(p) for p in prompt or [])


class Guard:
    def __init__(self, classifier: Any | None) -> None:
        self.classifier = classifier  # routing.jailbreak.SafetyClassifier, or None

    def wants_embedding(self, policy: Policy) -> bool:
        """Whether a request that routing would not embed must be embedded for safety: only
        when the team acts on jailbreaks. Logging alone uses the embedding when routing made
        one, so a request naming its member keeps the fast path (no ~7 ms of MiniLM)."""
        return self.classifier is not None and policy.safety.jailbreak_action != "log"

    def jailbreak_score(self, embedding: np.ndarray | None, text: str) -> float | None:
        if self.classifier is None or embedding is None:
            return None
        return float(self.classifier.score(embedding, text))

    def inspect(self, body: dict, analysis: Analysis, endpoint: str) -> SafetyOutcome:
        """Detect, record in the decision row's features, and apply the policy's actions.
        May rewrite `body` (redaction) or raise a 400 (block)."""
        out = SafetyOutcome()
        if endpoint == "embeddings":
            return out
        t0 = time.perf_counter()
        try:
            self._inspect(body, analysis, out)
        finally:
            analysis.features["safety_ms"] = round((time.perf_counter() - t0) * 1000, 3)
        return out

    def _inspect(self, body: dict, analysis: Analysis, out: SafetyOutcome) -> None:
        policy = analysis.policy.safety
        joined = _request_text(body)
        found = pii.kinds_found(joined, policy.pii_kinds)
        score = self.jailbreak_score(analysis.embedding, analysis.text)
        jailbreak = score is not None and score >= self.classifier.threshold
        safety: dict[str, Any] = {"pii": found, "jailbreak_score": score, "actions": []}
        analysis.features["safety"] = safety
        analysis.features["prompt_sha256"] = hashlib.sha256(joined.encode()).hexdigest()
        if found:
            analysis.flags.add("pii")
            kinds = ", ".join(f"{k} x{n}" if n > 1 else k for k, n in sorted(found.items()))
            if policy.pii_action == "block":
                safety["actions"].append("block:pii")
                raise GatewayError(400, f"The request contains personal data ({kinds}); this "
                                   "team's policy does not allow sending it to a model.",
                                   code="pii_blocked")
            if policy.pii_action == "redact" and "messages" in body:
                out.redactor = pii.Redactor()
                body["messages"], _ = pii.redact_messages(body["messages"], out.redactor,
                                                          policy.pii_kinds)
                safety["actions"].append("redact:pii")
            elif policy.pii_action == "route":
                out.required_tags.add(PII_SAFE_TAG)
                safety["actions"].append(f"route:{PII_SAFE_TAG}")
        if jailbreak:
            analysis.flags.add("jailbreak")
            if policy.jailbreak_action == "block":
                safety["actions"].append("block:jailbreak")
                raise GatewayError(400, "The request was flagged as a jailbreak attempt or a "
                                   f"harmful request (score {score:.2f}); this team's policy "
                                   "blocks such requests.", code="jailbreak_blocked")
            if policy.jailbreak_action == "route":
                out.required_tags.add(HARDENED_TAG)
                safety["actions"].append(f"route:{HARDENED_TAG}")
            else:
                safety["actions"].append("log:jailbreak")
        if analysis.policy.store_prompts:
            analysis.features["prompt"] = _request_text(body)  # redacted if so
        analysis.features["flags"] = sorted(analysis.flags)


def restore_response(data: dict, redactor: pii.Redactor) -> dict:
    """Put the redacted values back into a (non-streamed) answer."""
    for choice in data.get("choices") or []:
        msg = choice.get("message") or {}
        if isinstance(msg.get("content"), str):
            msg["content"] = redactor.restore(msg["content"])
        for tc in msg.get("tool_calls") or []:
            fn = tc.get("function") or {}
            if isinstance(fn.get("arguments"), str):
                fn["arguments"] = redactor.restore(fn["arguments"])
        if isinstance(choice.get("text"), str):
            choice["text"] = redactor.restore(choice["text"])
    return data


class StreamRestore:
    """Restores placeholders chunk by chunk, one restorer per choice index."""

    def __init__(self, redactor: pii.Redactor) -> None:
        self._redactor = redactor
        self._by_choice: dict[int, pii.StreamRestorer] = {}

    def chunk(self, data: dict) -> dict:
        for choice in data.get("choices") or []:
            r = self._by_choice.setdefault(choice.get("index", 0),
                                           self._redactor.stream_restorer())
            delta = choice.get("delta") or {}
            if isinstance(delta.get("content"), str):
                delta["content"] = r.feed(delta["content"])
            if choice.get("finish_reason") and isinstance(delta.get("content"), str):
                delta["content"] += r.flush()
            elif choice.get("finish_reason"):
                rest = r.flush()
                if rest:
                    delta["content"] = rest
                    choice["delta"] = delta
        return data
