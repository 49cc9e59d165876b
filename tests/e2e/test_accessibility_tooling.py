"""The browser checks themselves: the pinned axe-core is the one vendored, and it does
fail a page with a serious violation (a check that cannot fail would prove nothing)."""

from __future__ import annotations

import hashlib
import json

from tests.e2e.conftest import AXE_JS, AXE_SHA256, AXE_VERSION, axe_violations


def test_the_vendored_axe_core_is_the_pinned_release_with_its_licence():
    assert hashlib.sha256(AXE_JS.read_bytes()).hexdigest() == AXE_SHA256
    assert AXE_JS.read_text(encoding="utf-8").startswith(f"/*! axe v{AXE_VERSION}")
    assert (AXE_JS.parent / "LICENSE").read_text().startswith("Mozilla Public License")


def test_axe_reports_an_unlabelled_field_and_an_empty_button_and_passes_a_clean_page(chromium):
    bad = (
        "<!doctype html><html lang=en><head><title>bad</title></head><body><main>"
        "<h1>Form</h1><input type=text><button></button></main></body></html>"
    )
    good = (
        "<!doctype html><html lang=en><head><title>good</title></head><body><main>"
        "<h1>Form</h1><label for=n>Name</label><input id=n type=text>"
        "<button>Send</button></main></body></html>"
    )

    def check(page) -> tuple[list[str], list[str]]:
        page.set_content(bad)
        found_bad = axe_violations(page)
        page.set_content(good)
        return found_bad, axe_violations(page)

    found_bad, found_good = chromium(check)
    assert any("label" in v for v in found_bad), json.dumps(found_bad)
    assert any("button-name" in v for v in found_bad), json.dumps(found_bad)
    assert found_good == []
