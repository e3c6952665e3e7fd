"""Domain errors: what went wrong, in terms a user of the service understands.

Each carries the HTTP status and the snake_case code it maps to, so ``app.http.errors`` can answer
any of them with the contract's JSON body without the service knowing about HTTP.
"""

from __future__ import annotations


class DomainError(Exception):
    status: int = 400
    code: str = "bad_request"
    headers: dict[str, str] | None = None

    def __init__(self, message: str | None = None, *, code: str | None = None) -> None:
        super().__init__(message or self.__class__.__doc__ or self.code)
        self.message = message or (self.__class__.__doc__ or self.code).strip()
        if code:
            self.code = code


class BadRequest(DomainError):
    """The request is malformed."""

    status, code = 400, "bad_request"


class MissingFile(DomainError):
    """No file in the upload."""

    status, code = 400, "missing_file"


class Unauthorized(DomainError):
    """A valid API key is required."""

    status, code = 401, "unauthorized"


class Forbidden(DomainError):
    """Not allowed."""

    status, code = 403, "forbidden"


class NotFoundError(DomainError):
    """Not found."""

    status, code = 404, "not_found"


class Gone(DomainError):
    """Every reference to this content has been deleted."""

    status, code = 410, "gone"


class PayloadTooLarge(DomainError):
    """The upload is larger than the size limit."""

    status, code = 413, "payload_too_large"


class UnsupportedMediaType(DomainError):
    """The file type is not allowed."""

    status, code = 415, "unsupported_media_type"


class Unprocessable(DomainError):
    """The image cannot be decoded."""

    status, code = 422, "undecodable"


class TooManyPixels(Unprocessable):
    """The image has more pixels than the limit."""

    code = "too_many_pixels"


class IntegrityFailure(DomainError):
    """Stored bytes do not match their hash."""

    status, code = 500, "integrity_failure"


class Unavailable(DomainError):
    """Temporarily unavailable; retry later."""

    status, code = 503, "unavailable"

    def __init__(
        self, message: str | None = None, *, code: str | None = None, retry_after: int = 5
    ) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after
        self.headers = {"Retry-After": str(retry_after)}


class InsufficientStorage(DomainError):
    """No space left to stage the upload."""

    status, code = 507, "insufficient_storage"
