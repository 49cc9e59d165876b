from backends.demo import demo_world_load


def test_health_reports_the_database_redis_and_the_loaded_world(client, db):
    demo_world_load()
    response = client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["checks"]["redis"] == "ok"
    assert body["checks"]["world"]["regions"] == 54
    assert body["checks"]["world"]["latency_pairs"] == 2862


def test_health_says_degraded_when_redis_is_unreachable(client, db, settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    response = client.get("/health")
    assert response.status_code == 503
    assert response.json()["checks"]["redis"].startswith("error")
