"""hoop-api methods for auditors: sessions, search, replay and verification."""

from __future__ import annotations

from typing import TYPE_CHECKING

from broker.api_methods import ApiMethods

if TYPE_CHECKING:
    from broker.app import Broker


def audit_methods(broker: Broker) -> ApiMethods:
    return ApiMethods()
