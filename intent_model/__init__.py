"""Intent-specialised embedding models: CLINC150 evaluation (`python -m intent_model.eval`) and
contrastive fine-tuning (`python -m intent_model.train`). Not part of the serving path: the
embed service loads whatever directory training writes, unchanged, through EMBED_MODEL_PATH."""
