"""Key administration on the configuration: add, rotate and list API keys.

Only SHA-256 hashes are stored; a key is shown once, when it is made. A stored key is named by
:func:`lossproof.config.key_id` (the start of its hash), which is safe to print and to type.
"""

from __future__ import annotations

from dataclasses import dataclass

from lossproof.config import Config, KeyHolder, TenantConfig, hash_key, key_id, new_key, now_iso


class KeyAdminError(Exception):
    """A key operation that cannot be done, with a one-line reason."""


@dataclass(frozen=True)
class KeyInfo:
    id: str
    kind: str  # "tenant", "replay" or "operator"
    tenant: str  # the tenant for tenant keys, "" otherwise
    created: str  # ISO 8601 UTC, or "" for keys made before creation times were kept


def list_keys(cfg: Config) -> list[KeyInfo]:
    out = [
        KeyInfo(key_id(h), "tenant", name, t.key_created.get(h, ""))
        for name, t in sorted(cfg.tenants.items())
        for h in t.key_hashes
    ]
    for kind, holder in (("replay", cfg.replay), ("operator", cfg.operator)):
        out += [KeyInfo(key_id(h), kind, "", holder.key_created.get(h, "")) for h in holder.key_hashes]
    return out


def holder_for(cfg: Config, tenant: str | None, replay: bool, operator: bool, create: bool) -> KeyHolder:
    """The section whose keys a command changes; a tenant that does not exist is made only if
    ``create``."""
    if operator:
        return cfg.operator
    if replay:
        return cfg.replay
    assert tenant is not None
    if tenant not in cfg.tenants:
        if not create:
            known = ", ".join(sorted(cfg.tenants)) or "none"
            raise KeyAdminError(f"no tenant {tenant!r} (tenants: {known})")
        cfg.tenants[tenant] = TenantConfig()
    return cfg.tenants[tenant]


def add(holder: KeyHolder) -> str:
    key = new_key()
    holder.add_key(hash_key(key), now_iso())
    return key


def rotate(holder: KeyHolder, old_id: str | None) -> tuple[str, str]:
    """Replace one key by a new one; returns (new key, id of the key it replaced). Without
    ``old_id`` the holder must have exactly one key, so a rotation never guesses which to drop."""
    if old_id is None:
        if len(holder.key_hashes) != 1:
            ids = ", ".join(key_id(h) for h in holder.key_hashes) or "none"
            raise KeyAdminError(
                f"{len(holder.key_hashes)} keys here (ids: {ids}): name the one to replace with --id"
            )
        old = holder.key_hashes[0]
    else:
        matches = [h for h in holder.key_hashes if key_id(h) == old_id]
        if not matches:
            ids = ", ".join(key_id(h) for h in holder.key_hashes) or "none"
            raise KeyAdminError(f"no key with id {old_id!r} here (ids: {ids})")
        old = matches[0]
    key = add(holder)
    holder.remove_key(old)
    return key, key_id(old)
