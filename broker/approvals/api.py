"""hoop-api methods for approvals and access requests."""

from __future__ import annotations

from typing import TYPE_CHECKING

from broker.api_methods import ApiMethods

if TYPE_CHECKING:
    from broker.app import Broker


def approval_methods(broker: Broker) -> ApiMethods:
    return ApiMethods()
