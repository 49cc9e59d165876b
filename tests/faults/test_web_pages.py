"""What strangers see of the web: styled error pages that reveal nothing, static files
served by the web process, and the gateway and the web each keeping to their part."""

from __future__ import annotations

import httpx
import pytest
from django.test import Client, RequestFactory

from tests.servers import serve


def test_an_anonymous_404_is_the_styled_page_and_lists_no_url_patterns(db):
    response = Client().get("/no/such/page")
    assert response.status_code == 404
    page = response.content.decode()
    assert "Not found" in page
    assert "css/tesseract.css" in page  # the site's own layout
    for leak in ("URLconf", "admin/", "console/", "Using the URLconf", "REDIS"):
        assert leak not in page


def test_a_server_error_is_the_styled_500_page(db):
    from django.views.defaults import server_error

    response = server_error(RequestFactory().get("/"))
    page = response.content.decode()
    assert response.status_code == 500
    assert "Something went wrong" in page
    assert "css/tesseract.css" in page


def test_a_403_says_why_in_the_site_layout(alice):
    from tests.conftest import login

    response = login(alice).get("/console/")
    assert response.status_code == 403
    page = response.content.decode()
    assert "The console is for Tesseract operators." in page
    assert "css/tesseract.css" in page


def test_static_files_are_served_by_the_web_process(db):
    response = Client().get("/static/css/tesseract.css")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/css")


@pytest.fixture
def two_processes(transactional_db, settings, monkeypatch):
    """The gateway and the web apps served as `make run` serves them."""
    from routing.gateway.app import GatewayApp
    from tesseract_web import asgi

    # A gateway app of its own: the process-wide one may already serve on another test
    # server's event loop, and its HTTP and Redis clients cannot cross loops.
    monkeypatch.setattr(asgi, "gateway_http", GatewayApp())

    settings.DATABASES["default"]["CONN_MAX_AGE"] = 0
    with serve(asgi.gateway) as gateway_url, serve(asgi.web) as web_url:
        settings.TESSERACT_WEB_URL, settings.TESSERACT_GATEWAY_URL = web_url, gateway_url
        yield gateway_url, web_url


def test_the_gateway_serves_the_api_and_sends_browsers_to_the_web(two_processes):
    gateway_url, web_url = two_processes
    assert httpx.get(f"{gateway_url}/v1/models").status_code == 401  # the API, wants a key
    assert httpx.get(f"{gateway_url}/metrics").status_code == 200
    assert httpx.get(f"{gateway_url}/health").status_code in (200, 503)
    browser = httpx.get(f"{gateway_url}/account/login/?next=/console/")
    assert browser.status_code == 307
    assert browser.headers["location"] == f"{web_url}/account/login/?next=/console/"
    posted = httpx.post(f"{gateway_url}/account/login/", data={"username": "a", "password": "b"})
    assert posted.status_code == 404
    assert "web UI is at" in posted.json()["error"]["message"]


def test_the_web_serves_pages_and_points_api_clients_to_the_gateway(two_processes):
    gateway_url, web_url = two_processes
    assert httpx.get(f"{web_url}/account/login/").status_code == 200
    assert httpx.get(f"{web_url}/static/css/tesseract.css").status_code == 200
    response = httpx.post(f"{web_url}/v1/chat/completions", json={})
    assert response.status_code == 404
    error = response.json()["error"]
    assert f"{gateway_url}/v1/chat/completions" in error["message"]
    assert httpx.get(f"{web_url}/metrics").status_code == 404
