"""Every error the gateway raises below the HTTP surface (domain/errors.py) is answered as handlers/errors.py says,
in the gateway's envelope: no class is left to fall through to a 500."""
import inspect

import pytest

from domain import errors
from handlers.errors import body_of, headers_of, status_of

RAISED = [kind for _, kind in inspect.getmembers(errors, inspect.isclass)
          if issubclass(kind, errors.GatewayError) and kind is not errors.GatewayError]


def make(kind):
    return kind("boom", limit=3, running=3) if kind is errors.ConcurrencyLimitExceeded else kind("boom")


def test_the_errors_are_all_found():
    assert len(RAISED) >= 12


@pytest.mark.parametrize("kind", RAISED, ids=lambda kind: kind.__name__)
def test_every_error_has_a_status_below_500_or_a_gateway_one(kind):
    status = status_of(make(kind))
    assert status != 500 and (400 <= status < 500 or status in (502, 503, 504)), (kind, status)


@pytest.mark.parametrize("kind", RAISED, ids=lambda kind: kind.__name__)
def test_every_answer_is_the_envelope(kind):
    body = body_of(make(kind))
    assert body["message"] == "boom"
    if kind is errors.ConcurrencyLimitExceeded:
        assert body == {"code": "concurrency_limit_exceeded", "message": "boom", "limit": 3, "running": 3}
    else:
        assert body == {"code": status_of(make(kind)), "message": "boom"}


def test_the_answer_carries_fields_retry_after_and_details():
    error = errors.ServiceUnavailable("away", errors={"x": ["bad"]}, retry_after=1.6, details={"reason": "r"})
    assert body_of(error) == {"code": 503, "message": "away", "errors": {"x": ["bad"]}, "reason": "r"}
    assert headers_of(error) == {"Retry-After": "2"}
    assert headers_of(errors.UnsupportedWebSocketVersion()) == {"Sec-WebSocket-Version": "13"}
    assert status_of(errors.GatewayError("unclassified")) == 500  # only the base class itself
