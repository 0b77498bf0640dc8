"""The forward pass of an embedding model: token ids in, pooled float32 vectors out.

One `Forward` per backend (`torch_unpadded`, `torch_padded`, `onnx_runtime`), each owning its
pooling and normalisation; the unpadded BERT core (`unpadded`) that serving and training share;
and the `Router` that picks a forward per batch size. A library for `embed_service` and
`intent_model`, like `intent_embed`: it imports neither.
"""
