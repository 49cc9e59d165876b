"""Proof-of-residency downloads: a request's, or a month's, for the organization's members."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from asgiref.sync import sync_to_async
from django.contrib.auth.decorators import login_required
from django.core.handlers.asgi import ASGIRequest
from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.views.decorators.http import require_GET

from accounts import audit, audit_verify, selectors
from accounts.models import Organization, User

CONTENT_TYPE = "application/jsonl; charset=utf-8"
#: Lines read from the database per step of a streamed download.
CHUNK_LINES = 1000


async def _in_chunks(lines: Iterator[str]) -> AsyncIterator[str]:
    """The lines for an ASGI server, a chunk at a time. (Django would read a synchronous
    iterator whole into memory first: a month of a busy tenant is millions of lines.)"""
    take = sync_to_async(lambda: "".join(itertools.islice(lines, CHUNK_LINES)))
    while chunk := await take():
        yield chunk


def _org(request: HttpRequest, org_slug: str) -> Organization:
    """Any member may download (`view`); anyone else, stranger or not, gets 404."""
    user = request.user
    assert isinstance(user, User)
    return selectors.access_membership(user=user, org_slug=org_slug, permission="view").org


def _attachment(response: HttpResponse | StreamingHttpResponse, filename: str) -> None:
    response["Content-Disposition"] = f'attachment; filename="{filename}"'


@login_required
@require_GET
def request_proof(request: HttpRequest, org_slug: str, request_id: str) -> HttpResponse:
    org = _org(request, org_slug)
    lines = audit.request_lines(org=org, request_id=request_id)
    if lines is None:
        raise Http404("No such request in this organization's audit log.")
    response = HttpResponse("".join(lines), content_type=CONTENT_TYPE)
    _attachment(response, f"tesseract-proof-{org.slug}-{request_id}.jsonl")
    return response


@login_required
@require_GET
def month_proof(request: HttpRequest, org_slug: str, month: str) -> StreamingHttpResponse:
    org = _org(request, org_slug)
    try:
        lines = audit.month_lines(org_id=org.pk, month=month)
    except ValueError:
        raise Http404("A month is written YYYY-MM.") from None
    content = _in_chunks(lines) if isinstance(request, ASGIRequest) else lines
    response = StreamingHttpResponse(content, content_type=CONTENT_TYPE)
    _attachment(response, f"tesseract-proof-{org.slug}-{month}.jsonl")
    return response


@require_GET
def verifier(request: HttpRequest) -> HttpResponse:
    """The offline verifier itself (standard library only), to run on a proof file."""
    source = Path(audit_verify.__file__).read_bytes()
    response = HttpResponse(source, content_type="text/x-python; charset=utf-8")
    _attachment(response, "audit_verify.py")
    return response
