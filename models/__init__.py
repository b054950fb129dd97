"""Classifier members, fusion strategies and ensembles."""

from models.base import Member, TorchMember
from models.ensemble import Ensemble, Judgement
from models.exceptions import ModelError

__all__ = ["Ensemble", "Judgement", "Member", "ModelError", "TorchMember"]
