"""The former name of :mod:`embed_service.unpadded`, kept only because `intent_model.train` and
its test still import `Packed` from here; remove once they import `UnpaddedBatch` from there."""

from embed_service.unpadded import UnpaddedBatch as Packed

__all__ = ["Packed"]
