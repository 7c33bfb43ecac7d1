"""cosmicai: serverless AI inference over astronomical datasets (the CosmicAI workload)."""

from __future__ import annotations

__version__ = "0.1.0"
