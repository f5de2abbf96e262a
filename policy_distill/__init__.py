"""policy-distill: distil pretrained Atari policies into small students (Sobolev training)."""

from __future__ import annotations

__version__ = "0.1.0"
