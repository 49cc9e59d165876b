"""The benchmarks still run end to end, on tiny inputs (no plot, a temp folder)."""

from bench import engine_speed, routing

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
