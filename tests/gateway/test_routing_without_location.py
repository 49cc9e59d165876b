"""The openai SDK's default call carries no client location: the gateway counts its own
round trip to each backend (issue 8), so a tight deadline stays near the gateway."""

from __future__ import annotations

import openai


def test_a_tight_deadline_without_location_from_westeurope_does_not_cross_the_atlantic(
    mesh, api_key, usage
):
    sdk = openai.OpenAI(base_url=f"{mesh.gateway_url}/v1", api_key=api_key, max_retries=0)
    raw = sdk.chat.completions.with_raw_response.create(
        model="llama-3.3-70b-instruct",
        messages=[{"role": "user", "content": "quick"}],
        max_tokens=4,
        extra_headers={"X-Tesseract-Max-Ttft-Ms": "50"},  # and no client_region at all
    )
    assert raw.parse().choices[0].message.content
    region = raw.headers["x-tesseract-route"].split("/")[0]
    # Before the fix the engine predicted ~7 ms for a Cerebras chip in Canada (no
    # network counted) and sent the request there: ~100 ms away from westeurope.
    assert mesh.spec.regions[region].geo_group == "Europe", region
    assert mesh.spec.regions[region].country_code != "US"
    [event] = usage()
    assert event.region == region
