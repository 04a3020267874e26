"""Fixtures shared by every test directory, and the run-order switch. Docker-backed
fixtures connect lazily, so unit tests run on machines without an engine; the helpers
they call live in tests/support.

``DOCKYARD_TEST_ORDER=reverse`` runs the selected tests in reverse order (``make
test-isolation`` runs each module alone that way): a test that only passes after another
one has run fails there.

A run that selects no test exits 5 (pytest's own code). Under CI that fails the build;
the Makefile forgives it only outside CI, where it usually means a ``-k`` filter that
matched nothing.

``DOCKYARD_TEST_RUNTIME=runsc`` deploys every environment of the stacks the tests deploy
on gVisor (tests/support/stacks.py; ``make test-runsc``); the run's header names it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator

import docker
import pytest

from tests.support.engine import connect, remove_labelled
from tests.support.images import build_image
from tests.support.stacks import Deployed, StackFactory, deploy_runtime

TEST_ORDERS = ("forward", "reverse")
STACK_FIXTURES = {"deploy", "deploy_own"}


def pytest_report_header(config: pytest.Config) -> str:
    # Also refuses a runtime the harness does not know before any test runs.
    return f"dockyard: environments deployed on runtime {deploy_runtime()}"


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    order = os.environ.get("DOCKYARD_TEST_ORDER", "forward")
    if order not in TEST_ORDERS:
        raise pytest.UsageError(
            f"DOCKYARD_TEST_ORDER={order!r} is not allowed (allowed: {', '.join(TEST_ORDERS)})"
        )
    if order == "reverse":
        items.reverse()
    if deploy_runtime() != "runc":
        # A test that deploys no stack runs nothing on the runtime: it would only repeat
        # the runc run (role variables, manifests, refused configs), so it is left out.
        kept = [item for item in items if STACK_FIXTURES & set(getattr(item, "fixturenames", ()))]
        left = [item for item in items if item not in kept]
        if left:
            config.hook.pytest_deselected(items=left)
            items[:] = kept


@pytest.fixture(autouse=True)
def _an_event_loop_on_the_main_thread() -> None:
    """Every test starts with a usable event loop on the main thread.

    anyio's test runner (tests/api) and ``asyncio.run`` close their loop and leave the main
    thread without a current one; Pulumi's synchronous helpers, which the program tests and
    the harness call, then fail with "There is no current event loop" in every later module."""
    _usable_event_loop()


@pytest.fixture(autouse=True, scope="module")
def _an_event_loop_for_module_fixtures() -> None:
    """The same for a module's own fixtures, which run before any test-scoped one (a module
    fixture that runs the program under mocks failed after a module that used asyncio.run)."""
    _usable_event_loop()


def _usable_event_loop() -> None:
    policy = asyncio.get_event_loop_policy()
    try:
        usable = not policy.get_event_loop().is_closed()
    except RuntimeError:
        usable = False
    if not usable:
        policy.set_event_loop(policy.new_event_loop())


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    client = connect()
    try:
        yield client
    finally:
        remove_labelled(client)
        client.close()


@pytest.fixture(scope="session")
def core_image(docker_client: docker.DockerClient) -> str:
    """The core image built from images/core with the pinned build args."""
    return build_image(docker_client, "dockyard-core")


@pytest.fixture(scope="module")
def deploy(
    docker_client: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., Deployed]]:
    """Factory: deploy(label, values, secrets) -> Deployed, torn down after the module."""
    stacks = StackFactory(docker_client, tmp_path_factory)
    try:
        yield stacks.deploy
    finally:
        stacks.teardown()


@pytest.fixture
def deploy_own(
    docker_client: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., Deployed]]:
    """Like ``deploy``, torn down as soon as the test ends: for a test that replaces,
    breaks or destroys what it deploys, so its stack is its alone."""
    stacks = StackFactory(docker_client, tmp_path_factory)
    try:
        yield stacks.deploy
    finally:
        stacks.teardown()
