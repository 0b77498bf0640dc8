"""Tiny stand-ins for the two training sources, in their real file formats, so training and
evaluation run end to end in seconds on the shared tiny BERT."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

CLINC_INTENTS = {
    "balance": ["how much money is in my account", "what is my balance", "show my funds"],
    "transfer": ["send money to my mom", "move cash to savings", "wire fifty dollars to bob"],
    "weather": ["will it rain today", "how hot is it outside", "what is the forecast"],
    "timer": ["set a timer for ten minutes", "start a countdown", "time five minutes for me"],
}
PRETRAIN_INTENTS = {
    "play music": ["play some jazz", "put on my playlist", "i want to hear rock"],
    "create alarm": ["wake me at six", "set an alarm for noon", "alarm at 7 tomorrow"],
    "get directions": ["how do i get to the mall", "route to the airport", "directions home"],
    "find restaurant": ["find me a thai place", "where can i eat sushi", "cheap pizza nearby"],
    "book hotel": ["book a room in paris", "reserve a hotel for two nights", "find a hotel"],
}


@pytest.fixture(scope="session")
def tiny_clinc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """CLINC150's format: train (each utterance twice, once with 'please'), val, test, oos."""
    train = [[f"{t} please" if n else t, i] for i, ts in CLINC_INTENTS.items()
             for t in ts for n in range(2)]  # fmt: skip
    queries = [[f"{t} now", i] for i, ts in CLINC_INTENTS.items() for t in ts[:2]]
    oos = [["who won the game", "oos"], ["sing me a song", "oos"]]
    path = tmp_path_factory.mktemp("clinc") / "data_full.json"
    body = {"train": train, "val": queries, "test": queries, "oos_val": oos, "oos_test": oos}
    path.write_text(json.dumps(body))
    return path


@pytest.fixture(scope="session")
def tiny_pretrain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pretraining set's format: `utterance||intent name||keywords` per line."""
    directory = tmp_path_factory.mktemp("pretrain")
    rows = [f"{t}||{i}||{t}" for i, ts in PRETRAIN_INTENTS.items() for t in ts]
    (directory / "train.txt").write_text("\n".join(rows) + "\n")
    (directory / "val.txt").write_text("\n".join(rows[::2] + rows[1::2]) + "\n")
    return directory


HINT3_INTENTS = {
    "EMI": ["do you offer emi", "emi options please", "can i pay monthly", "zero cost emi"],
    "RETURN": ["how do i return it", "return my order", "i want a refund", "send it back"],
    "WARRANTY": ["what is the warranty", "is there a guarantee", "warranty period", "cover"],
}


@pytest.fixture(scope="session")
def tiny_hint3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """HINT3's format for its three set names: `sentence,label` CSV (powerplay11 with a trailing
    empty column, as the real file), out-of-scope test rows labelled NO_NODES_DETECTED."""
    directory = tmp_path_factory.mktemp("hint3")
    for name in ("sofmattress", "curekart", "powerplay11"):
        extra = "," if name == "powerplay11" else ""
        train = [f"{t},{i}{extra}" for i, ts in HINT3_INTENTS.items() for t in ts[:3]]
        test = [f"{ts[3]},{i}" for i, ts in HINT3_INTENTS.items()]
        test += ["what is the weather,NO_NODES_DETECTED", '"hi, there",NO_NODES_DETECTED']
        (directory / f"{name}_train.csv").write_text(
            "\n".join([f"sentence,label{extra}", *train]) + "\n"
        )
        (directory / f"{name}_test.csv").write_text("\n".join(["sentence,label", *test]) + "\n")
    return directory
