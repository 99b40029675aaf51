"""The failover daemon's wait between checks (handlers/failover.wait_for_next_check): the
interval, or less when a kept check connection's server ends the session."""

from __future__ import annotations

import asyncio
import socket
import time

from shopdb_operator.handlers.failover import suspect_interval, wait_for_next_check


class Stopped:
    """kopf's DaemonStopped as the daemon uses it: true once the daemon is to stop."""

    def __init__(self):
        self.event = asyncio.Event()

    def __bool__(self):
        return self.event.is_set()


def run(coroutine_factory):
    return asyncio.run(coroutine_factory())


def test_waits_the_interval_when_nothing_happens():
    ours, server = socket.socketpair()
    with ours, server:
        async def wait():
            started = time.monotonic()
            woke = await wait_for_next_check(Stopped(), 0.3, [ours.fileno()])
            return woke, time.monotonic() - started

        woke, took = run(wait)
    assert woke is False and took >= 0.29


def test_a_session_ended_by_its_server_wakes_the_check_at_once():
    ours, server = socket.socketpair()
    with ours:
        async def wait():
            asyncio.get_running_loop().call_later(0.05, server.close)  # the server process killed
            started = time.monotonic()
            woke = await wait_for_next_check(Stopped(), 5, [ours.fileno()])
            return woke, time.monotonic() - started

        woke, took = run(wait)
    assert woke is True and took < 1


def test_stopping_ends_the_wait_and_is_not_an_early_check():
    ours, server = socket.socketpair()
    with ours, server:
        async def wait():
            stopped = Stopped()
            asyncio.get_running_loop().call_later(0.05, stopped.event.set)
            started = time.monotonic()
            woke = await wait_for_next_check(stopped, 5, [ours.fileno()], slice_seconds=0.1)
            return woke, time.monotonic() - started

        woke, took = run(wait)
    assert woke is False and took < 1  # seen within a slice (STOP_SLICE_SECONDS)


def test_no_socket_is_watched_twice_and_none_left_registered():
    ours, server = socket.socketpair()
    with ours, server:
        async def wait():
            loop = asyncio.get_running_loop()
            server.send(b"x")
            assert await wait_for_next_check(Stopped(), 5, [ours.fileno()]) is True
            # unregistered afterwards: registering it again is allowed
            loop.add_reader(ours.fileno(), lambda: None)
            loop.remove_reader(ours.fileno())
            return await wait_for_next_check(Stopped(), 0.1, [])

        assert run(wait) is False


def test_a_suspected_primary_is_checked_at_half_the_interval_but_not_below_a_second():
    assert suspect_interval(2) == 1.0
    assert suspect_interval(10) == 5.0
    assert suspect_interval(1) == 1.0
