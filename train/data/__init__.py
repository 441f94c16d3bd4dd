"""Data that exists offline on a fresh machine (generated systems), cached after the first build."""
from .systems import SYSTEMS, simulate, standardise

__all__ = ["SYSTEMS", "simulate", "standardise"]
