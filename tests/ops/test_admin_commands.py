"""`ctl purge-room` / `ctl erase-user`: the command records, checked before anything is sent,
and accepted by the fold's own model."""

from __future__ import annotations

import orjson
import pytest

from receipt_streams.core.models import AdminCommand
from receipt_streams.entrypoints.cli import main
from receipt_streams.ops.admin import command
from receipt_streams.ops.output import CtlError


def test_commands_are_what_the_fold_accepts() -> None:
    purge = command("purge_room", "!r:hs1", "room deleted", 5)
    assert purge == {
        "command": "purge_room",
        "room_id": "!r:hs1",
        "ts": 5,
        "reason": "room deleted",
    }
    erase = command("erase_user", "@u:hs1", None, 6)
    assert erase == {"command": "erase_user", "user_id": "@u:hs1", "ts": 6}
    for value in (purge, erase):
        AdminCommand.model_validate_json(orjson.dumps(value))


@pytest.mark.parametrize(
    ("kind", "target"),
    [
        ("purge_room", "@u:hs1"),
        ("purge_room", "room"),
        ("erase_user", "!r:hs1"),
        ("erase_user", ""),
    ],
)
def test_bad_targets_are_refused_before_anything_is_sent(kind: str, target: str) -> None:
    with pytest.raises(CtlError, match=r"invalid (room|user) ID") as refused:
        command(kind, target, None, 1)
    assert "full room ID" in refused.value.hint


def test_the_cli_refuses_a_bad_target_with_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ctl", "purge-room", "not-a-room", "--json"]) == 2
    assert "error" in orjson.loads(capsys.readouterr().out)
    assert main(["export", "--since", "yesterday-ish", "--json"]) == 2
