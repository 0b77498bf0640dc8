"""The gRPC embedding service: one sentence-embedding model served with dynamic batching."""
