"""The safety stage's detectors, which feed routing (they may block, redact or restrict
candidates): PII and secrets (`pii`: patterns and checksums, no model), person names
(`person_names`: a LoRA MiniLM token tagger) and jailbreak / prompt injection (`jailbreak`:
a LoRA MiniLM sequence classifier). Their training lives in train/, so serving imports carry
no training code. The model-backed detectors import torch when loaded, not at import."""

from routing.safety.jailbreak import JailbreakScore, SafetyClassifier
from routing.safety.person_names import NameSpan, PersonTagger
from routing.safety.pii import PiiSpan, Redactor, StreamRestorer, detect, redact_messages

__all__ = [
    "JailbreakScore",
    "NameSpan",
    "PersonTagger",
    "PiiSpan",
    "Redactor",
    "SafetyClassifier",
    "StreamRestorer",
    "detect",
    "redact_messages",
]
