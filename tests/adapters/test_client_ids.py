"""Group members' client ids name their web port, for `ctl status` to probe each /readyz."""

from receipt_streams.adapters.client_ids import member_client_id, web_port_of
from receipt_streams.config import Settings


def test_client_id_names_the_web_port() -> None:
    s = Settings(app_id="app", web_port=7001)
    assert member_client_id(s, "fold") == "app-fold@web:7001"
    assert web_port_of(member_client_id(s, "sync-deltas")) == 7001
    assert web_port_of("aiokafka-0.14.0") is None
    assert web_port_of("app-fold@web:") is None
