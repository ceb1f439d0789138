"""Safety on the request path: personal data and jailbreak attempts, detected locally, handled
as the team's policy says (allow or log, redact, block, or route to members with a tag)."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gateway.errors import GatewayError
from gateway.routing_service import Analysis
from routing import Policy, content_text
from routing.safety import pii

log = logging.getLogger(__name__)
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
    """`names`: a person-name finder for PII (routing.safety.person_names.PersonTagger), "shipped"
    to load the shipped tagger on first use, or None for the structured kinds only."""

    def __init__(self, classifier: Any | None, names: Any = "shipped") -> None:
        self.classifier = classifier  # routing.safety.jailbreak.SafetyClassifier, or None
        self._names = names
        self._names_lock = threading.Lock()

    @property
    def names(self) -> pii.NameFinder | None:
        if self._names == "shipped":
            with self._names_lock:
                if self._names == "shipped":
                    try:
                        from routing.safety import PersonTagger

                        self._names = PersonTagger.load()
                    except (ImportError, OSError) as e:  # broken install: structured only
                        log.error("person-name tagger unavailable (%s)", e)
                        self._names = None
        return self._names

    @property
    def needs_thread(self) -> bool:
        """A model runs in `inspect` (milliseconds): off the event loop. Regexes alone take
        microseconds, less than a hop to a thread and back."""
        return self.classifier is not None or self._names is not None

    def wants_embedding(self, policy: Policy) -> bool:
        """The classifier reads the request text itself, not the routing embedding, so
        safety never asks routing for an embedding."""
        return False

    def jailbreak_score(self, embedding: np.ndarray | None, text: str) -> float | None:
        """Max over the text's chunks (`embedding` is unused; kept for callers)."""
        if self.classifier is None:
            return None
        return float(self.classifier.score(text))

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
        names = self.names
        found = pii.kinds_found(joined, policy.pii_kinds, names)
        jb = self.classifier.explain(joined) if self.classifier is not None else None
        score = jb.score if jb is not None else None
        jailbreak = jb is not None and jb.score >= self.classifier.threshold
        safety: dict[str, Any] = {"pii": found, "jailbreak_score": score, "actions": []}
        if jb is not None:
            safety["jailbreak_chunks"] = jb.chunks
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
                                                          policy.pii_kinds, names)
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
