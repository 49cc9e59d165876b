from django.core.management.base import BaseCommand

from backends.demo import demo_world_load


class Command(BaseCommand):
    help = (
        "Load the demo global mesh (regions, RTTs, chips, models, deployments) from backends/data."
    )

    def handle(self, *args: object, **options: object) -> None:
        result = demo_world_load()
        self.stdout.write(
            self.style.SUCCESS(
                f"Demo world loaded: {result.regions} regions, {result.latencies} RTT pairs, "
                f"{result.chips} chips, {result.models} models, {result.clusters} clusters, "
                f"{result.deployments} deployments."
            )
        )
