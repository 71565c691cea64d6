"""A trip booking saga: book a flight, a hotel and a car; when the car fails, undo the rest in reverse.

Each booking is an activity. After it succeeds, the workflow registers the activity that undoes it
with a ``duro.Saga``. The car cannot be booked, so the saga cancels the hotel, then the flight, and
the workflow fails with the car's error. Compensations are activities too: they are recorded in the
history and would resume after a crash like any other step.

    .venv/bin/python examples/saga.py [DATA_DIR | STORE_URL]    # default: ./duro-data/saga-<timestamp>
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass

import duro


@dataclass
class Trip:
    trip_id: str
    traveller: str
    destination: str
    nights: int
    car_class: str


@dataclass
class Itinerary:
    flight: str
    hotel: str
    car: str


# --- activities: the bookings and their cancellations (cancellations should be idempotent) ---------


@duro.activity
async def book_flight(ctx: duro.ActivityContext, trip: Trip) -> str:
    print(f"  [activity] book flight to {trip.destination} for {trip.traveller} ... ok")
    return f"FLIGHT-{trip.trip_id}"


@duro.activity
async def book_hotel(ctx: duro.ActivityContext, trip: Trip) -> str:
    print(f"  [activity] book hotel in {trip.destination}, {trip.nights} nights ... ok")
    return f"HOTEL-{trip.trip_id}"


@duro.activity
async def book_car(ctx: duro.ActivityContext, trip: Trip) -> str:
    print(f"  [activity] book a {trip.car_class} car in {trip.destination} ... none left")
    # non_retryable: retrying will not conjure up a car; fail the activity at once.
    raise duro.ApplicationError(f"no {trip.car_class} available in {trip.destination}", type="CarUnavailable",
                                non_retryable=True)


@duro.activity
async def cancel_flight(ctx: duro.ActivityContext, booking: str) -> None:
    print(f"  [activity] cancel flight {booking} ... ok")


@duro.activity
async def cancel_hotel(ctx: duro.ActivityContext, booking: str) -> None:
    print(f"  [activity] cancel hotel {booking} ... ok")


@duro.activity
async def cancel_car(ctx: duro.ActivityContext, booking: str) -> None:
    print(f"  [activity] cancel car {booking} ... ok")


# --- the workflow ---------------------------------------------------------------------------------


@duro.workflow
async def book_trip(ctx: duro.WorkflowContext, trip: Trip) -> Itinerary:
    undo_policy = duro.RetryPolicy(initial_interval=1, maximum_attempts=10)
    async with duro.Saga(ctx) as saga:  # duro.Saga(ctx, parallel=True) would undo all at once
        flight = await ctx.execute_activity(book_flight, trip, start_to_close_timeout=30)
        saga.add_compensation(cancel_flight, flight, start_to_close_timeout=30, retry_policy=undo_policy)
        hotel = await ctx.execute_activity(book_hotel, trip, start_to_close_timeout=30)
        saga.add_compensation(cancel_hotel, hotel, start_to_close_timeout=30, retry_policy=undo_policy)
        car = await ctx.execute_activity(book_car, trip, start_to_close_timeout=30)
        saga.add_compensation(cancel_car, car, start_to_close_timeout=30, retry_policy=undo_policy)
    return Itinerary(flight, hotel, car)


def describe(exc: BaseException | None, indent: str = "  ") -> None:
    """Print an error and its cause chain, one line each."""
    while exc is not None:
        kind = getattr(exc, "type", None) or type(exc).__name__
        print(f"{indent}{type(exc).__name__} [{kind}]: {exc}")
        exc, indent = exc.__cause__, indent + "  "


async def main(where: str) -> None:
    url = where if "://" in where else f"lmdb://{where}"  # a directory, or any store URL
    trip = Trip("T-42", traveller="alice", destination="Lisbon", nights=3, car_class="convertible")
    print(f"store: {url}")
    async with duro.Client.connect(url) as client:
        async with duro.Worker(client, task_queue="trips", workflows=[book_trip],
                               activities=[book_flight, book_hotel, book_car, cancel_flight, cancel_hotel,
                                           cancel_car]):
            print(f"starting workflow trip-{trip.trip_id}")  # before the call: the worker may begin first
            handle = await client.start_workflow(book_trip, trip, id=f"trip-{trip.trip_id}", task_queue="trips")
            try:
                itinerary = await handle.result()
            except duro.WorkflowFailedError as e:
                print(f"\ntrip {trip.trip_id} was not booked; the workflow failed with:")
                describe(e.__cause__)
            else:
                print(f"\nbooked: {itinerary}")
            history = await handle.fetch_history()

    print(f"\nwhat the history recorded ({len(history)} events), step by step:")
    for event in history:
        if event.event_type in ("ActivityTaskCompleted", "ActivityTaskFailed"):
            outcome = "ok" if event.event_type == "ActivityTaskCompleted" else "FAILED"
            print(f"  {event.event_id:>3}  {event.name:<14} {outcome}")
    print(f"  {history[-1].event_id:>3}  {history[-1].event_type}")


if __name__ == "__main__":
    directory = sys.argv[1] if len(sys.argv) > 1 else f"./duro-data/saga-{time.strftime('%Y%m%d-%H%M%S')}"
    asyncio.run(main(directory))
