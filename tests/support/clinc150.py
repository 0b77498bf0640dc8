"""The CLINC150 test queries from `shared/data` next to the repository, or, in a bare clone,
short queries of the same kind so the tests still run on realistic inputs."""

from __future__ import annotations

import json
from pathlib import Path

from intent_model.data import default_data_path

REPO_ROOT = Path(__file__).resolve().parents[2]
CLINC150 = default_data_path()  # where the intent model's training finds it too

FALLBACK_QUERIES = [
    "how would you say fly in italian", "what's the spanish word for pasta",
    "my card was charged twice", "what is my account balance", "set an alarm for 7 am",
    "book a table for two at an italian place", "how long does it take to boil an egg",
    "is my flight on time", "transfer 200 dollars to my savings", "what's the weather tomorrow",
    "i lost my credit card", "tell me a joke", "how many calories in a banana",
    "what is the exchange rate for euros", "play some jazz", "cancel my reservation",
    "when is my next meeting", "change my pin number please", "who made you",
    "what's the meaning of life", "order more paper towels", "remind me to call mom at 5",
]  # fmt: skip


def clinc_test_texts(every: int = 1) -> list[str]:
    """Every `every`-th CLINC150 test query (the fallback queries without the file)."""
    if CLINC150.exists():
        rows = json.loads(CLINC150.read_text())["test"]
        return [text for text, _ in rows[::every]]
    return list(FALLBACK_QUERIES)
