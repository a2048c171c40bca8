"""The one map from typed core errors to HTTP statuses, as every admin route answers them."""

from __future__ import annotations

import pytest
from flask import Flask

from lmcache_adapters.l2.dax import InvalidSizeError, UnsupportedOperationError
from lmcache_core import errors
from lmcache_core.fleet.ports import ServerUnreachable
from lmcache_core.ports import ListingNotSupportedError
from lmcache_frontends.admin.errors import ERROR_STATUSES, domain_error, status_for


@pytest.mark.parametrize(
    ("exc", "status", "body_status"),
    [
        (errors.InvalidKeyError("bad key"), 400, 400),
        (errors.InvalidRequestError("empty"), 400, 400),
        (errors.ConfigError("field x must be int"), 400, 422),
        (errors.InvalidValueError("size must be positive"), 400, 400),
        (InvalidSizeError("size must be positive"), 400, 400),
        (UnsupportedOperationError("no such operation"), 400, 400),
        (errors.UnprocessableError("field y"), 422, 422),
        (errors.NotFoundError("no adapter"), 404, 404),
        (errors.ConflictError("busy"), 409, 409),
        (errors.ForbiddenOperationError("no"), 403, 403),
        (errors.NotInitializedError("starting"), 503, 503),
        (errors.BackendUnreachableError("down"), 503, 503),
        (ServerUnreachable("peer down"), 502, 502),
        (errors.NotSupportedError("no checksums"), 501, 501),
        (ListingNotSupportedError("no listing"), 501, 501),
        (errors.PluginError("bad plugin"), 500, 500),
        (errors.RegistrationError("too big"), 400, 400),  # unlisted core error: a refusal
    ],
)
def test_each_core_error_has_one_status(exc: BaseException, status: int, body_status: int) -> None:
    assert status_for(exc) == status
    assert status_for(exc, of_body=True) == body_status


def test_an_error_that_is_not_ours_is_a_bug() -> None:
    assert status_for(ValueError("x")) is None
    assert status_for(KeyError("x"), of_body=True) is None


def test_a_more_specific_row_is_never_shadowed_by_its_base() -> None:
    """A row below a row for one of its bases would never match: the map would lie."""
    for i, later in enumerate(ERROR_STATUSES):
        for earlier in ERROR_STATUSES[:i]:
            assert not issubclass(later.error, earlier.error), f"{later.error.__name__} is shadowed by {earlier.error.__name__}"


def test_domain_error_answers_the_mapped_status_and_hides_bugs() -> None:
    app = Flask(__name__)
    with app.app_context():
        refused = domain_error(errors.ConfigError("field x must be int"), of_body=True, detail=True)
        assert refused.status_code == 422
        assert refused.get_json() == {"error": "field x must be int", "detail": "field x must be int"}
        bug = domain_error(errors.PluginError("secret internals"))
        assert bug.status_code == 500
        assert bug.get_json() == {"error": "internal error"}
