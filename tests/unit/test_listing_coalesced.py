"""dockyard.sessions.listing.Coalesced: identical calls at once share one run, but a call
never gets the answer of a run that started before it arrived (what was written before a
list request is in its answer)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from dockyard.sessions.listing import Coalesced


class Store:
    """A value that runs read when they start, then wait for ``gate``."""

    def __init__(self) -> None:
        self.value = 0
        self.gate = asyncio.Event()
        self.started = 0

    async def began(self, runs: int) -> None:
        while self.started < runs:
            await asyncio.sleep(0)

    async def read(self) -> int:
        seen = self.value  # what a run reads is what was written before it started
        self.started += 1
        await self.gate.wait()
        return seen


def test_a_call_never_gets_a_run_that_started_before_it_arrived() -> None:
    async def scenario() -> tuple[int, int, int]:
        store, shared = Store(), Coalesced[int]()
        first = asyncio.ensure_future(shared("k", store.read))
        await store.began(1)  # the first run has read 0 and waits
        store.value = 1  # a write (a create) completes after that run began...
        second = asyncio.ensure_future(shared("k", store.read))  # ...and before this call
        await asyncio.sleep(0)
        store.gate.set()
        return await first, await second, shared.runs

    first, second, runs = asyncio.run(scenario())
    assert (first, second) == (0, 1)
    assert runs == 2


def test_many_identical_calls_at_once_cost_at_most_two_runs() -> None:
    async def scenario() -> tuple[list[int], int]:
        store, shared = Store(), Coalesced[int]()
        calls = [asyncio.ensure_future(shared("k", store.read)) for _ in range(100)]
        await store.began(1)
        store.value = 7
        calls += [asyncio.ensure_future(shared("k", store.read)) for _ in range(100)]
        await asyncio.sleep(0)
        store.gate.set()
        return list(await asyncio.gather(*calls)), shared.runs

    answers, runs = asyncio.run(scenario())
    # The first call ran alone at once; the other 99 of the first hundred arrived while it
    # ran, so they (and the later hundred) share the next run, which read the new value.
    assert answers == [0] + [7] * 199
    assert runs == 2


def test_different_keys_never_share_a_run() -> None:
    async def scenario() -> list[str]:
        shared = Coalesced[str]()
        gate = asyncio.Event()

        def reader(answer: str) -> Callable[[], Awaitable[str]]:
            async def read() -> str:
                await gate.wait()
                return answer

            return read

        calls = [
            asyncio.ensure_future(shared(("acme", ()), reader("acme's"))),
            asyncio.ensure_future(shared(("blue", ()), reader("blue's"))),
            asyncio.ensure_future(shared(("acme", ()), reader("acme's"))),
        ]
        await asyncio.sleep(0)
        gate.set()
        return list(await asyncio.gather(*calls))

    assert asyncio.run(scenario()) == ["acme's", "blue's", "acme's"]


def test_an_error_reaches_every_joined_call_and_is_not_kept() -> None:
    async def scenario() -> tuple[list[BaseException | int], int, int]:
        shared = Coalesced[int]()
        gate = asyncio.Event()
        failing = True

        async def read() -> int:
            await gate.wait()
            if failing:
                raise OSError("the registry is unreadable")
            return 5

        calls = [asyncio.ensure_future(shared("k", read)) for _ in range(3)]
        await asyncio.sleep(0)
        gate.set()
        answers = list(await asyncio.gather(*calls, return_exceptions=True))
        failing = False
        return answers, await shared("k", read), shared.runs

    answers, after, runs = asyncio.run(scenario())
    assert all(isinstance(a, OSError) for a in answers), answers
    assert (after, runs) == (5, 3)


def test_a_caller_that_goes_away_does_not_cancel_the_others_run() -> None:
    async def scenario() -> tuple[int, int]:
        store, shared = Store(), Coalesced[int]()
        first = asyncio.ensure_future(shared("k", store.read))
        await store.began(1)
        joined = [asyncio.ensure_future(shared("k", store.read)) for _ in range(2)]
        await asyncio.sleep(0)
        first.cancel()
        joined[0].cancel()
        await asyncio.sleep(0)
        store.value = 3
        store.gate.set()
        with pytest.raises(asyncio.CancelledError):
            await first
        # The first run went on (its result unused), then the queued one read the write.
        return await joined[1], store.started

    assert asyncio.run(scenario()) == (3, 2)
