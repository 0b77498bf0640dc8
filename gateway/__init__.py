"""The REST gateway: OpenAI-compatible embeddings over HTTP, translated into gRPC calls.

It owns the public HTTP contract (routes, request validation, OpenAI error bodies, response
encoding) and nothing else: authentication and usage live in metering, vectors in the embed
service, both reached only through the generated stubs in `intent_embed.v1`.
"""
