"""Pure pipeline functions: records in, records out, time passed in. No Faust, no I/O.

Faust agents, replay jobs, tests and benchmarks all call these same functions.
"""

from streams.pipeline.normalise import Deduplicator, extract_cashtags, normalise
from streams.pipeline.risk import NegativeSurgeRule, RiskEngine, RiskUpdate
from streams.pipeline.score import fan_out, score_documents

__all__ = [
    "Deduplicator",
    "NegativeSurgeRule",
    "RiskEngine",
    "RiskUpdate",
    "extract_cashtags",
    "fan_out",
    "normalise",
    "score_documents",
]
