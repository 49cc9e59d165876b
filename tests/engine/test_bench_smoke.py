"""The benchmarks still run end to end, on tiny inputs (no plot, a temp folder)."""

from bench import engine_speed, routing
from bench.workload import Mix, make_jobs

SUBSET = "eastus,westeurope,francecentral,japaneast,westus"


def test_the_routing_bench_runs_on_the_azure_trace_and_breaks_no_compliance(tmp_path):
    rows = routing.main(
        [
            "--requests", "800", "--loads", "0.5", "--strategies", "deadline,nearest",
            "--out-dir", str(tmp_path), "--no-plot",
        ]
    )  # fmt: skip
    assert {r["strategy"] for r in rows} == {"deadline", "nearest"}
    assert all(r["compliance_violations"] == 0 for r in rows)
    assert (tmp_path / "routing.md").exists()
    assert (tmp_path / "routing.csv").exists()


def test_the_routing_bench_takes_another_world_and_a_jsonl_trace_with_affinity(tmp_path):
    rows = routing.main(
        [
            "--trace", str(routing.MOONCAKE), "--region-subset", SUBSET, "--requests", "600",
            "--loads", "0.7", "--strategies", "deadline", "--affinity",
            "--out-dir", str(tmp_path), "--no-plot", "--name", "mc",
        ]
    )  # fmt: skip
    assert [r["strategy"] for r in rows] == ["deadline", "deadline (caches, no affinity)"]
    assert all(r["compliance_violations"] == 0 for r in rows)


def test_the_speed_bench_writes_its_table(tmp_path):
    out = tmp_path / "speed.md"
    text = engine_speed.main(["--sizes", "50", "--repeat", "50", "--out", str(out)])
    assert "| 50 |" in text
    assert out.exists()


def test_requests_without_a_location_are_routed_from_their_nearest_gateway(tmp_path):
    # Without the gateway's round trip the engine predicted 0 ms of network for them
    # and sent tight deadlines across oceans: about 73% of the feasible ones were met.
    rows = routing.main(
        [
            "--requests", "1500", "--loads", "0.3", "--strategies", "deadline",
            "--no-location-share", "0.5", "--out-dir", str(tmp_path), "--no-plot",
        ]
    )  # fmt: skip
    (row,) = rows
    assert 0.4 < row["no_location_share"] < 0.6
    assert row["attainment_vs_oracle_no_location"] > 0.95
    assert row["compliance_violations"] == 0


def test_a_client_without_a_location_reaches_the_gateway_nearest_to_it():
    world = routing.load_world(routing.REGIONS_CSV, routing.RTT_CSV)[0]
    trace = routing.looped(routing.load_trace(routing.DEFAULT_TRACE), 200)
    jobs = make_jobs(trace, world, Mix(no_location_share=1.0))
    sites = {c.region for c in world.clusters.values()}
    for job in jobs:
        assert job.request.client_region is None
        assert job.gateway in sites
        assert world.rtt_ms(job.client, job.gateway) == min(
            world.rtt_ms(job.client, s) for s in sites
        )
    located = make_jobs(trace, world, Mix())
    assert [j.client for j in located] == [j.client for j in jobs]  # the same clients
    assert all(j.gateway is None and j.request.client_region == j.client for j in located)
