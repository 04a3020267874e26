"""``pools:`` in the host settings: warm pools of ready environments (issue 29 item 1).

One entry per tenant, backend, variant and profile, with a floor (``min``: ready members
the pool keeps) and a ceiling (``max``: members it may hold at once, ones being made
included). Host settings only in practice; the model refuses a pool on Kubernetes, the
same combination twice, a ceiling under its floor, and ceilings that together pass the
host's ``quotas.environments`` (members count against the quota like any environment).

A member is a whole environment made ahead for one tenant: its engine names, labels and
network carry the tenant and its id, so a pool names the tenant its members are for
(none: sessions without a tenant). Members are claimed by the creates where dockyard
chooses the session id (the E2B-compatible ``POST /sandboxes``): a create that names its
own id is cold (docs/instant-sessions.md#warm-pools says why).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, ValidationInfo, field_validator

from . import values as v
from .base import Model
from .sections import KnownProfile, Variant

POOL_CEILING = 100
"""The most members one pool entry may hold."""
POOL_ENTRIES = 32
"""The most pool entries a host's settings may list."""

PoolSize = Annotated[int, BeforeValidator(v.bounded_int(0, POOL_CEILING))]


class Pool(Model):
    """Ready members for sessions of one tenant, backend, variant and profile."""

    tenant: v.Tenant | None = None
    """The tenant the members are made for; None: sessions without a tenant."""
    backend: Literal["claude", "codex"] = "claude"
    variant: Variant = "core"
    profile: KnownProfile = "standard"
    min: PoolSize = 0
    """Ready (unclaimed) members the pool keeps."""
    max: PoolSize | None = None
    """Members the pool may hold at once; None: ``min``."""

    @field_validator("max")
    @classmethod
    def _not_under_floor(cls, ceiling: int | None, info: ValidationInfo) -> int | None:
        floor = info.data.get("min")
        if ceiling is None or not isinstance(floor, int):
            return ceiling
        if ceiling < floor or ceiling == 0:
            raise v.refuse(f"an integer {max(floor, 1)}-{POOL_CEILING} (at least min, {floor})")
        return ceiling

    @property
    def ceiling(self) -> int:
        return self.min if self.max is None else self.max

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.tenant or "", self.backend, self.variant, self.profile)

    @property
    def label(self) -> str:
        """``[tenant/]backend-variant-profile``: the pool's name in state and messages."""
        kind = f"{self.backend}-{self.variant}-{self.profile}"
        return f"{self.tenant}/{kind}" if self.tenant else kind


def _distinct(pools: list[Pool]) -> list[Pool]:
    seen: dict[tuple[str, str, str, str], int] = {}
    bad: list[tuple[int | str, Any, str]] = []
    for index, pool in enumerate(pools):
        if pool.key in seen:
            bad.append(
                (
                    index,
                    pool.label,
                    f"one entry per tenant, backend, variant and profile (pools[{seen[pool.key]}] "
                    "has this one)",
                )
            )
        seen.setdefault(pool.key, index)
    if bad:
        raise v.refuse_items(bad)
    return pools


Pools = Annotated[list[Pool], v.bounded_list(POOL_ENTRIES), AfterValidator(_distinct)]


def check_pools(pools: list[Pool], info: ValidationInfo) -> list[Pool]:
    """The stack-wide rules of ``pools`` (the stack's field validator calls this)."""
    if not pools:
        return pools
    if info.data.get("backend") == "kubernetes":
        raise v.refuse("none with backend kubernetes (pools hold Docker environments)")
    quotas = info.data.get("quotas")
    cap = getattr(quotas, "environments", None)
    total = sum(pool.ceiling for pool in pools)
    if cap is not None and total > cap:
        raise v.refuse(
            f"ceilings (max) that together stay within quotas.environments ({cap}); "
            f"these add up to {total}"
        )
    return pools
