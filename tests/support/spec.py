"""Validators built from the Matrix spec's own schema files in ../shared/spec/matrix/."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SPEC = Path(__file__).resolve().parents[3] / "shared" / "spec" / "matrix" / "data"


def _load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def _registry(base: Path) -> Registry:
    """Every YAML file under `base`, addressable by its path relative to the citing file."""
    return Registry().with_resources(
        (path.as_uri(), Resource.from_contents(_load(path), default_specification=DRAFT202012))
        for path in base.rglob("*.yaml")
    )


@cache
def _validator(relative: str) -> Draft202012Validator:
    path = SPEC / relative
    schema = {"$id": path.as_uri(), **_load(path)}
    return Draft202012Validator(schema, registry=_registry(SPEC))


def validate_receipt_event(event: dict[str, Any]) -> None:
    """The client-side `m.receipt` event (content[event][type][user] = {ts, thread_id?})."""
    _validator("event-schemas/schema/m.receipt.yaml").validate(event)


def validate_federation_receipt_edu(edu: dict[str, Any]) -> None:
    """The federation `m.receipt` EDU (content[room]["m.read"][user] = {event_ids, data})."""
    _validator("api/server-server/definitions/event-schemas/m.receipt.yaml").validate(edu)


def receipt_event_errors(event: dict[str, Any]) -> list[str]:
    """Every reason the spec's `m.receipt` schema refuses `event` (empty when it is valid)."""
    validator = _validator("event-schemas/schema/m.receipt.yaml")
    return [e.message for e in validator.iter_errors(event)]


@cache
def _sync_validator() -> Draft202012Validator:
    path = SPEC / "api/client-server/sync.yaml"
    pointer = "#/paths/~1sync/get/responses/200/content/application~1json/schema"
    return Draft202012Validator({"$ref": path.as_uri() + pointer}, registry=_registry(SPEC))


def validate_sync_response(response: dict[str, Any]) -> None:
    """A whole `/sync` 200 response, against the schema inside the spec's sync.yaml."""
    _sync_validator().validate(response)
