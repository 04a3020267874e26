"""API keys over HTTP: admin keys create them; a tenant's key lists and revokes its own
tenant's (another's answers 404). The key itself is in the create answer only."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from .principal import Caller, Ctx
from .store import KeyInfo

router = APIRouter(tags=["keys"])


class NewKey(BaseModel):
    tenant: str | None = Field(default=None, description="The tenant the key acts as.")
    admin: bool = Field(default=False, description="An admin key (every tenant, keys).")


# A key as the store shows it (its KeyInfo, read by attribute), its fields in camelCase.
class Key(KeyInfo):
    model_config = ConfigDict(from_attributes=True, alias_generator=to_camel, populate_by_name=True)


class IssuedKey(Key):
    key: str = Field(description="The key: shown this once, stored only as a digest.")


@router.post("/api/keys", status_code=201, summary="Create a key (admin)")
async def create_key(new: NewKey, request: Request, caller: Caller, ctx: Ctx) -> IssuedKey:
    caller.require_admin(f"{request.method} {request.url.path}")
    issued = await ctx.call(ctx.store.create, new.tenant, new.admin)
    return IssuedKey(**issued.info.model_dump(), key=issued.key)


@router.get("/api/keys", summary="List keys (never the keys themselves)")
async def list_keys(caller: Caller, ctx: Ctx) -> list[Key]:
    found = await ctx.call(ctx.store.list, None if caller.admin else caller.tenant)
    return [Key.model_validate(info) for info in found]


@router.delete("/api/keys/{key_id}", summary="Revoke a key")
async def revoke_key(key_id: str, caller: Caller, ctx: Ctx) -> Key:
    """An admin revokes any key; a tenant's key only its tenant's (itself included)."""
    info = await ctx.call(ctx.store.revoke, key_id, None if caller.admin else caller.tenant)
    return Key.model_validate(info)
