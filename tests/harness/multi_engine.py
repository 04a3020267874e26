"""The Docker-realising harness for stacks that span several engines.

A several-host stack declares one ``pulumi:providers:docker`` per host and sends each
resource to its host's provider. :class:`MultiEngineMocks` does what the provider
plugins would: it remembers which URL each provider names and realises every resource
on that provider's engine, through a :class:`DockerRealisingMocks` per engine that all
share one :class:`HarnessState` (so teardown undoes everything, on every engine, in
reverse creation order). A provider whose URL is not one of the test's engines is
refused: a resource never lands on an engine the test did not start.
"""

from __future__ import annotations

from typing import Any

import docker
import pulumi

from tests.harness.docker_mocks import DockerRealisingMocks, HarnessError, HarnessState

PROVIDER = "pulumi:providers:docker"


class MultiEngineMocks(pulumi.runtime.Mocks):
    def __init__(
        self,
        default: docker.DockerClient,
        engines: dict[str, docker.DockerClient],
        state: HarnessState,
    ) -> None:
        """``default`` takes resources without a provider; ``engines`` maps each Docker
        host URL the stack may name to its client."""
        self.state = state
        self.default = DockerRealisingMocks(default, state)
        self.by_url = {url: DockerRealisingMocks(client, state) for url, client in engines.items()}
        self.by_provider: dict[str, DockerRealisingMocks] = {}

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict]:
        if args.typ == PROVIDER:
            host = args.inputs.get("host")
            if host not in self.by_url:
                raise HarnessError(
                    f"provider {args.name}: host {host} is not one of this test's engines"
                )
            provider_id = f"provider-{args.name}"
            self.by_provider[args.name] = self.by_url[host]
            return provider_id, {}
        return self._engine_of(args).new_resource(args)

    def _engine_of(self, args: pulumi.runtime.MockResourceArgs) -> DockerRealisingMocks:
        if not args.provider:
            return self.default
        # "urn:pulumi:<stack>::<project>::pulumi:providers:docker::<name>::<id>"
        name = args.provider.split("::")[-2]
        if name.startswith("default"):
            return self.default
        try:
            return self.by_provider[name]
        except KeyError:
            raise HarnessError(
                f"{args.typ} {args.name}: unknown provider {args.provider}"
            ) from None

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict, Any]:
        raise HarnessError(f"function {args.token} is not supported")

    def destroy(self) -> None:
        # Every realised resource carries its own engine's undo: one pass does all engines.
        self.default.destroy()
