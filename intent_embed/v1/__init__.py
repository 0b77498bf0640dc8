"""Generated stubs for ``intent_embed.v1`` (do not edit the ``*_pb2*`` files by hand)."""
