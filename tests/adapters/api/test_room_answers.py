"""Kept answers stay within their bound, the least recently used going first, and a written
room's answers are all dropped."""

from __future__ import annotations

from receipt_streams.adapters.api.room_answers import RoomAnswers


def test_the_least_recently_used_go_first_within_the_bound() -> None:
    answers = RoomAnswers(max_receipts=10)
    answers.put("!a", "all", [1, 2, 3])  # 4 with its own count
    answers.put("!b", "all", [1, 2, 3])
    assert answers.get("!a", "all") == [1, 2, 3]  # now the most recently used
    answers.put("!c", "all", [1, 2])  # 3 more: 11 > 10, so !b goes
    assert answers.get("!b", "all") is None
    assert answers.get("!a", "all") == [1, 2, 3]
    assert answers.get("!c", "all") == [1, 2]
    assert answers.held == 7


def test_an_answer_larger_than_the_bound_is_not_kept() -> None:
    answers = RoomAnswers(max_receipts=3)
    answers.put("!a", "all", [1, 2, 3])
    assert answers.get("!a", "all") is None and answers.held == 0
    none_kept = RoomAnswers(max_receipts=0)
    none_kept.put("!a", "all", [])
    assert none_kept.get("!a", "all") is None


def test_a_written_room_loses_all_its_answers_and_only_its() -> None:
    answers = RoomAnswers(max_receipts=100)
    answers.put("!a", ("since", 0, 5), [1])
    answers.put("!a", ("event", "$e"), [])
    answers.put("!b", "all", [1, 2])
    answers.forget(["!a", "!unknown"])
    assert answers.get("!a", ("since", 0, 5)) is None
    assert answers.get("!a", ("event", "$e")) is None
    assert answers.get("!b", "all") == [1, 2]
    assert answers.held == 3 and len(answers) == 1


def test_a_replaced_answer_is_counted_once() -> None:
    answers = RoomAnswers(max_receipts=100)
    answers.put("!a", "all", [1, 2])
    answers.put("!a", "all", [1, 2, 3])
    assert answers.held == 4 and answers.get("!a", "all") == [1, 2, 3]
