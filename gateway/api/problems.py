"""RFC 9457 problem details: every error the API returns, with the offending field named."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

PROBLEM = "application/problem+json"
TITLES = {400: "Bad request", 401: "Unauthorized", 404: "Not found", 405: "Method not allowed",
          409: "Conflict", 413: "Request body too large", 415: "Unsupported media type",
          422: "Invalid request", 429: "Too many requests", 500: "Internal error",
          503: "Service unavailable"}


class Problem(Exception):
    def __init__(self, status: int, detail: str, *, field: str | None = None,
                 errors: list[dict[str, str]] | None = None,
                 headers: dict[str, str] | None = None, kind: str | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.errors = errors or ([{"field": field, "message": detail}] if field else [])
        self.headers = headers or {}
        self.kind = kind


def problem_response(status: int, detail: str, errors: list[dict[str, str]] | None = None,
                     headers: dict[str, str] | None = None, kind: str | None = None,
                     instance: str | None = None) -> JSONResponse:
    body: dict[str, Any] = {
        "type": f"https://dvp-gateway.dev/problems/{kind or status}",
        "title": TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    if errors:
        body["errors"] = errors
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


def _field(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or str(loc[0] if loc else "request")


def line_and_column(text: str | bytes, offset: int) -> tuple[int, int]:
    """1-based line and column (in characters) of `offset` in `text` (characters of a str,
    bytes of bytes: the column then counts the characters before it, invalid bytes as one
    each)."""
    offset = max(0, min(offset, len(text)))
    if isinstance(text, bytes):
        start = text.rfind(b"\n", 0, offset) + 1
        return text.count(b"\n", 0, offset) + 1, \
            len(text[start:offset].decode("utf-8", "replace")) + 1
    return text.count("\n", 0, offset) + 1, offset - (text.rfind("\n", 0, offset) + 1) + 1


def _error_of(error: dict, body: Any) -> dict[str, str]:
    """One `errors[]` entry of a validation error. A body that is not JSON is located in
    words (FastAPI gives a character offset as its "location", which would read as a field
    named "17"): field `body`, "line 1, column 18"."""
    if error.get("type") == "json_invalid":
        loc = tuple(error.get("loc", ()))
        # json's messages end "... at" where they expect a position ("Invalid control
        # character at"): the position follows in words.
        reason = str((error.get("ctx") or {}).get("error") or "malformed").removesuffix(" at")
        if len(loc) > 1 and isinstance(loc[-1], int) and isinstance(body, str | bytes):
            line, column = line_and_column(body, loc[-1])
            reason += f" at line {line}, column {column}"
        return {"field": "body", "message": f"not valid JSON: {reason}"}
    return {"field": _field(tuple(error.get("loc", ()))),
            "message": str(error.get("msg", "invalid"))}


def _unreadable_body(exc: StarletteHTTPException) -> list[dict[str, str]]:
    """The `errors` of a 400 for a JSON body that is not UTF-8 (FastAPI answers 400 "There
    was an error parsing the body" and keeps the decoding error as the cause): where the first
    invalid byte is, in words."""
    cause = exc.__cause__
    if exc.status_code != 400 or not isinstance(cause, UnicodeDecodeError):
        return []
    line, column = line_and_column(cause.object, cause.start)
    return [{"field": "body", "message": f"the body is not UTF-8 text: invalid byte "
                                         f"0x{cause.object[cause.start]:02x} at line {line}, "
                                         f"column {column} (byte {cause.start + 1})"}]


def install(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        return problem_response(exc.status, exc.detail, exc.errors, exc.headers, exc.kind,
                                request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [_error_of(e, exc.body) for e in exc.errors()]
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5])
        return problem_response(422, detail, errors, instance=request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(allowed_methods(request))
        errors = _unreadable_body(exc)
        return problem_response(exc.status_code, errors[0]["message"] if errors else
                                str(exc.detail), errors, headers=headers,
                                instance=request.url.path)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        import structlog

        structlog.get_logger("gateway.api").error(
            "unhandled_error", path=request.url.path, error=f"{type(exc).__name__}: {exc}")
        status, detail, headers = unexpected_answer(exc)
        return problem_response(status, detail, headers=headers, instance=request.url.path)


def unexpected_answer(exc: Exception) -> tuple[int, str, dict[str, str] | None]:
    """(status, detail, headers) of the answer to an exception no route handled: a node or
    the database that does not answer is a 503 to retry; a value the database cannot hold a
    422; anything else a 500."""
    from sqlalchemy.exc import DataError, OperationalError

    from gateway.chain.sending import node_unavailable

    if node_unavailable(exc):
        return 503, "a chain node is unavailable; retry later", {"Retry-After": "5"}
    if isinstance(exc, OperationalError):
        return 503, "the database is unavailable; retry later", {"Retry-After": "5"}
    if isinstance(exc, DataError):
        # A value the database cannot hold or compare (PostgreSQL refuses NUL characters
        # in text, for one): the request's data, not the server, is at fault.
        return 422, "a value in the request cannot be stored or searched for (control " \
            "characters?)", None
    return 500, "internal error; it has been logged", None


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path (a path may have one route per method)."""
    methods: set[str] = set()
    for route in _leaves(request.app.router.routes):
        match, _ = route.matches(request.scope)  # PARTIAL: the path matches, not the method
        if match is not Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return sorted(methods)


def _leaves(routes: list) -> list:
    """The routes of a router, those of included routers too (FastAPI keeps an included
    router as one entry holding the original, `original_router`; ours have no prefix)."""
    out = []
    for route in routes:
        inner = getattr(route, "original_router", None)
        out.extend(_leaves(inner.routes) if inner is not None else [route])
    return out


class BodyLimit:
    """Refuses request bodies over `max_bytes` with 413, whether they declare a
    Content-Length or arrive chunked: the body is counted as it is received, never buffered
    beyond the limit. Checked before authentication, so no key is needed to be refused."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self) -> str:
        return f"request bodies are limited to {self.max_bytes} bytes"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            response = problem_response(413, self._too_large(), instance=scope["path"])
            await response(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # FastAPI re-raises HTTPException from body reading; _http answers it.
                    raise HTTPException(413, self._too_large())
            return message

        await self.app(scope, counted, send)


def documented(answers: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` of a route for the problem+json answers it gives: status ->
    description."""
    return {status: {"description": f"{text} (problem+json)",
                     "content": {PROBLEM: {"schema": {"type": "object"}}}}
            for status, text in answers.items()}


def batch_problem(found: list[tuple[int, Problem]], size: int) -> Problem:
    """One answer for the problems of a batch's items, (item index, problem) each: every
    field named under its item (`trades[3].payment.amount`; `trades[3]` for a problem of the
    item as a whole). Its status: 422 if any item is invalid, else 409 (a conflict: the cap,
    a hashlock in use, a phase), else that of the problems (503); its type that of its
    problems when they share one."""
    status = next(s for s in (422, 409, *sorted({p.status for _, p in found}))
                  if any(p.status == s for _, p in found))
    kinds = {p.kind for _, p in found if p.status == status}
    errors = []
    for i, problem in sorted(found, key=lambda f: f[0]):
        for error in problem.errors or [{"message": problem.detail}]:
            field = error.get("field")
            errors.append({"field": f"trades[{i}]" + (f".{field}" if field else ""),
                           "message": error["message"]})
    items = sorted({i for i, _ in found})
    first_i, first = min(found, key=lambda f: (f[1].status != status, f[0]))
    detail = f"trades[{first_i}]: {first.detail}"
    if len(found) > 1:
        detail = (f"{len(items)} of the {size} trades refused, nothing was made or changed; "
                  f"first: {detail}")
    return Problem(status, detail, errors=errors,
                   kind=kinds.pop() if len(kinds) == 1 else None)
