"""``demo``: eventtrail end to end on this machine, in one command."""

from __future__ import annotations

from typing import Annotated

import typer

from eventtrail.cli.common import ConfigFile, DataDir, console, err_console, settings_from
from eventtrail.cli.render import flow_table
from eventtrail.config import open_queue, open_store
from eventtrail.consumer import Consumer
from eventtrail.demo import demo_flows
from eventtrail.event import encode_event
from eventtrail.worker import Worker

__all__ = ["demo"]


def demo(
    requests: Annotated[int, typer.Option(min=1, max=100_000, help="How many requests to simulate.")] = 50,
    show: Annotated[int, typer.Option(min=0, help="How many flows to print.")] = 3,
    seed: Annotated[int | None, typer.Option(help="Random seed, for the same traffic every time.")] = None,
    data_dir: DataDir = None,
    config_file: ConfigFile = None,
) -> None:
    """Simulate a gateway calling microservices A and B, carry its events
    through the embedded queue and worker into the store, and print flows."""
    settings = settings_from("local", data_dir, config_file)
    flows = list(demo_flows(requests, seed=seed))
    bodies = [encode_event(event).decode() for flow in flows for event in flow]
    with open_queue(settings) as queue, open_store(settings) as store:
        queue.send(bodies)
        err_console.print(f"sent {len(bodies)} events of {len(flows)} requests to {settings.queue_path}")
        total = Worker(queue, Consumer(store), batch_size=settings.batch_size).run(drain=True)
        err_console.print(
            f"worker: {total.stored} stored, {total.dead_lettered} dead-lettered, into {settings.store_path}"
        )
        for flow in flows[-show:] if show else []:
            request_id = flow[0].request_id
            console.print(flow_table(request_id, store.flow(request_id)))
    if flows:
        err_console.print(f"\nsee one again with: eventtrail flow {flows[-1][0].request_id}")
