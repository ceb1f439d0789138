"""Speculative decoding for the bundled engine: proposers (prompt lookup, a draft model, the
target's own early layers), the acceptance rule, and the adaptive draft length."""

from backends.engine.spec.adaptive import AdaptivePlanner, RequestSpec, SpecFigures
from backends.engine.spec.config import SpeculativeConfig
from backends.engine.spec.draft_model import DraftModelProposer
from backends.engine.spec.ngram import NgramProposer
from backends.engine.spec.proposer import DraftRequest, Proposal, Proposer
from backends.engine.spec.rejection import RowGroup, accept
from backends.engine.spec.self_spec import SelfSpecProposer
from backends.engine.spec.speculator import Speculator

__all__ = [
    "AdaptivePlanner", "DraftModelProposer", "DraftRequest", "NgramProposer", "Proposal",
    "Proposer", "RequestSpec", "RowGroup", "SelfSpecProposer", "SpecFigures",
    "SpeculativeConfig", "Speculator", "accept",
]
