"""S3 errors: an S3 error code, its HTTP status and a message naming the object."""

from __future__ import annotations

from xml.sax.saxutils import escape

from gfs.errors import HutongError

#: HTTP status of each S3 error code the gateway answers with.
STATUS: dict[str, int] = {
    "AccessDenied": 403, "AuthorizationHeaderMalformed": 400,
    "AuthorizationQueryParametersError": 400, "BadDigest": 400,
    "BucketAlreadyOwnedByYou": 409, "BucketNotEmpty": 409, "EntityTooSmall": 400,
    "EntityTooLarge": 400,
    "IncompleteBody": 400, "InternalError": 500, "InvalidAccessKeyId": 403,
    "InvalidArgument": 400, "InvalidBucketName": 400, "InvalidDigest": 400,
    "InvalidPart": 400, "InvalidPartOrder": 400, "InvalidRange": 416, "InvalidRequest": 400,
    "KeyTooLongError": 400, "MalformedXML": 400, "MethodNotAllowed": 405,
    "MissingContentLength": 411, "NoSuchBucket": 404, "NoSuchKey": 404, "NoSuchUpload": 404,
    "NotImplemented": 501, "ObjectConflict": 409, "PreconditionFailed": 412,
    "RequestTimeTooSkewed": 403, "SignatureDoesNotMatch": 403,
    "XAmzContentSHA256Mismatch": 400, "ServiceUnavailable": 503, "InvalidToken": 400,
    "ExpiredToken": 400,
}


class S3Error(HutongError):
    """An S3 request that fails with `code`; nothing was changed."""

    def __init__(self, code: str, message: str, resource: str = "") -> None:
        super().__init__(f"{code}: {message}" + (f" ({resource})" if resource else ""))
        self.code = code
        self.message = message
        self.resource = resource

    @property
    def status(self) -> int:
        return STATUS.get(self.code, 400)

    def to_xml(self, request_id: str) -> bytes:
        """The S3 `<Error>` document."""
        return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{self.code}</Code>'
                f"<Message>{escape(self.message)}</Message>"
                f"<Resource>{escape(self.resource)}</Resource>"
                f"<RequestId>{request_id}</RequestId></Error>").encode()
