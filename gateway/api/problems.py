"""RFC 9457 problem details: every error the API returns, with the offending field named."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

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


def install(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        return problem_response(exc.status, exc.detail, exc.errors, exc.headers, exc.kind,
                                request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"field": _field(tuple(e.get("loc", ()))),
                   "message": str(e.get("msg", "invalid"))} for e in exc.errors()]
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5])
        return problem_response(422, detail, errors, instance=request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return problem_response(exc.status_code, str(exc.detail), headers=exc.headers,
                                instance=request.url.path)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        import structlog

        structlog.get_logger("gateway.api").error(
            "unhandled_error", path=request.url.path, error=f"{type(exc).__name__}: {exc}")
        from sqlalchemy.exc import OperationalError

        if isinstance(exc, OperationalError):
            return problem_response(503, "the database is unavailable; retry later",
                                    headers={"Retry-After": "5"}, instance=request.url.path)
        return problem_response(500, "internal error; it has been logged",
                                instance=request.url.path)
