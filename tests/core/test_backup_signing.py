"""Backups are authenticated (issue 16 point 5): every file listed with its sha256, the manifest
signed (HMAC-SHA256) with a key kept outside the backups; verify and restore refuse a backup that
is unsigned, signed with another key, altered, or has a file added or missing, on both stores; a
Redis backup is verified in a scratch database, never in the production keyspace."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from pydantic import SecretStr

from core.backups import BackupManifest, ManifestSigner
from core.control_plane import ControlPlane
from core.errors import OperationError, PermissionDenied
from core.store.redis import VERIFY_DB, RedisStore
from tests.conftest import SettingsFactory
from tests.core.test_backups import ADMIN, OPERATOR, entries, flag_values, make_state
from tests.support.services import RedisServer

KEY = "k" * 48


@pytest.fixture(params=["sqlite", "redis"])
async def plane(
    request: pytest.FixtureRequest, make_settings: SettingsFactory, shared_redis: RedisServer
) -> AsyncIterator[ControlPlane]:
    """A started control plane on each store, with a generated backup signing key."""
    if request.param == "redis":
        raw = aioredis.Redis.from_url(shared_redis.url)
        await raw.flushall()
        await raw.aclose()
        started = ControlPlane(make_settings(), store=RedisStore(shared_redis.url))
    else:
        started = ControlPlane(make_settings())
    await started.start()
    yield started
    await started.close()


def manifest_path(plane: ControlPlane, backup_id: str) -> Path:
    return plane.backups.root / backup_id / "manifest.json"


def read_manifest(plane: ControlPlane, backup_id: str) -> dict[str, Any]:
    return dict(json.loads(manifest_path(plane, backup_id).read_text()))


def write_manifest(plane: ControlPlane, backup_id: str, manifest: dict[str, Any]) -> None:
    manifest_path(plane, backup_id).write_text(json.dumps(manifest))


def tamper_counts(plane: ControlPlane, backup_id: str) -> None:
    manifest = read_manifest(plane, backup_id)
    manifest["counts"]["flag_overrides"] += 1  # signature kept as it was
    write_manifest(plane, backup_id, manifest)


def sign_with_other_key(plane: ControlPlane, backup_id: str) -> None:
    other = ManifestSigner(SecretStr("someone-else's-key-" * 3))
    signed = other.sign(BackupManifest.model_validate(read_manifest(plane, backup_id)))
    manifest_path(plane, backup_id).write_text(signed.model_dump_json())


def strip_signature(plane: ControlPlane, backup_id: str) -> None:
    manifest = read_manifest(plane, backup_id)
    for field in ("signature", "key_id", "signature_algorithm"):
        manifest.pop(field)
    write_manifest(plane, backup_id, manifest)


def plant_file(plane: ControlPlane, backup_id: str) -> None:
    (plane.backups.root / backup_id / "flags.json").write_text('{"TRADING_HALTED": false}')


def remove_file(plane: ControlPlane, backup_id: str) -> None:
    name = read_manifest(plane, backup_id)["files"][0]["name"]
    (plane.backups.root / backup_id / name).unlink()


TAMPERINGS: dict[str, tuple[Callable[[ControlPlane, str], None], str]] = {
    "altered manifest": (tamper_counts, "signature does not match: the manifest was altered"),
    "other key": (sign_with_other_key, "signed with another key"),
    "unsigned": (strip_signature, "not signed"),
    "file added": (plant_file, "flags.json: not listed in the manifest"),
    "file missing": (remove_file, ": missing"),
}


async def test_manifest_lists_every_file_with_its_sha256_and_is_signed_with_a_key_outside(
    plane: ControlPlane,
) -> None:
    await make_state(plane)
    info = await plane.backups.create(OPERATOR)
    directory = plane.backups.root / info.id
    manifest = BackupManifest.model_validate(read_manifest(plane, info.id))

    on_disk = sorted(p.name for p in directory.iterdir() if p.name != "manifest.json")
    assert sorted(f.name for f in manifest.files) == on_disk
    assert all(len(f.sha256) == 64 for f in manifest.files)
    assert manifest.signature_algorithm == "hmac-sha256" and manifest.signature
    key_file = plane.settings.lunia_state_dir / "secrets" / "backup-signing-key"
    key = key_file.read_text().strip()
    assert ManifestSigner(SecretStr(key)).problem(manifest) is None
    assert not key_file.is_relative_to(plane.backups.root)
    for child in directory.iterdir():
        assert key.encode() not in child.read_bytes(), child.name
    assert (await plane.backups.verify(info.id, OPERATOR)).ok


@pytest.mark.parametrize("tampering", sorted(TAMPERINGS))
async def test_verify_and_restore_refuse_a_backup_not_as_this_deployment_signed_it(
    plane: ControlPlane, tampering: str
) -> None:
    tamper, problem = TAMPERINGS[tampering]
    await make_state(plane)
    info = await plane.backups.create(OPERATOR)
    tamper(plane, info.id)
    await plane.flags.set("LLM_RATE_LIMITED", "on", OPERATOR)
    flags, audit = flag_values(plane), len(await entries(plane))

    verification = await plane.backups.verify(info.id, OPERATOR)
    assert not verification.ok
    assert any(problem in p for p in verification.problems), verification.problems
    assert verification.counts == {}  # refused before any trial restore

    with pytest.raises(OperationError, match="cannot be restored") as refused:
        await plane.backups.restore(info.id, ADMIN, confirm=True)
    assert problem in refused.value.message
    assert "nothing changed" in refused.value.message
    assert flag_values(plane) == flags
    assert len(await entries(plane)) == audit + 2  # the refused verify and restore, audited


async def test_an_unsigned_backup_says_how_to_sign_it_and_an_admin_signing_it_is_audited(
    plane: ControlPlane,
) -> None:
    await make_state(plane)
    info = await plane.backups.create(OPERATOR)
    strip_signature(plane, info.id)
    verification = await plane.backups.verify(info.id, OPERATOR)
    assert any(f"lunia backup sign {info.id}" in p for p in verification.problems)
    (listed,) = [b for b in await plane.backups.list() if b.id == info.id]
    assert "not signed" in listed.problem  # `lunia backup list` shows why up front

    with pytest.raises(PermissionDenied):
        await plane.backups.sign(info.id, OPERATOR)
    signed = await plane.backups.sign(info.id, ADMIN)

    assert signed.key_id == ManifestSigner(plane.secrets.backup_signing_key).key_id
    assert (await plane.backups.verify(info.id, OPERATOR)).ok
    (listed,) = [b for b in await plane.backups.list() if b.id == info.id]
    assert listed.problem == ""
    entry = [e for e in await entries(plane) if e.action == "backup.sign"][-1]
    assert entry.outcome == "ok" and entry.target == info.id


async def test_signing_refuses_a_backup_whose_files_do_not_match_its_manifest(
    plane: ControlPlane,
) -> None:
    info = await plane.backups.create(OPERATOR)
    strip_signature(plane, info.id)
    plant_file(plane, info.id)

    with pytest.raises(OperationError, match="was not signed: flags.json: not listed"):
        await plane.backups.sign(info.id, ADMIN)
    assert "signature" not in read_manifest(plane, info.id)
    entry = [e for e in await entries(plane) if e.action == "backup.sign"][-1]
    assert entry.outcome == "failed"


async def test_a_rotated_key_still_verifies_old_backups_only_when_listed_as_old(
    make_plane: Callable[..., Any], tmp_path: Path
) -> None:
    backups = tmp_path / "backups"
    first = await make_plane(
        lunia_state_dir=tmp_path / "a", backup_dir=backups, backup_signing_key=KEY
    )
    info = await first.backups.create(OPERATOR)
    rotated = await make_plane(
        lunia_state_dir=tmp_path / "b",
        backup_dir=backups,
        backup_signing_key="n" * 48,
        backup_signing_keys_old=KEY,
    )
    forgot = await make_plane(
        lunia_state_dir=tmp_path / "c", backup_dir=backups, backup_signing_key="n" * 48
    )

    assert (await rotated.backups.verify(info.id, OPERATOR)).ok
    refused = await forgot.backups.verify(info.id, OPERATOR)
    assert any("signed with another key" in p for p in refused.problems)
    assert any("BACKUP_SIGNING_KEYS_OLD" in p for p in refused.problems)


async def test_backup_signing_key_file_is_read_like_the_other_secrets(
    make_plane: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "backup-key"
    path.write_text(KEY + "\n")
    monkeypatch.setenv("BACKUP_SIGNING_KEY_FILE", str(path))  # as a Docker secret is handed over
    plane = await make_plane()
    assert plane.secrets.backup_signing_key.get_secret_value() == KEY
    assert not (plane.settings.lunia_state_dir / "secrets" / "backup-signing-key").exists()


async def _keyspace(client: aioredis.Redis) -> dict[bytes, bytes]:
    return {key: await client.dump(key) for key in sorted(await client.keys("*"))}


@pytest.mark.slow
async def test_verifying_a_redis_backup_never_touches_the_production_keyspace(
    make_settings: SettingsFactory, shared_redis: RedisServer
) -> None:
    production = aioredis.Redis.from_url(shared_redis.url)
    await production.flushall()
    await production.config_set("notify-keyspace-events", "KA")
    plane = ControlPlane(make_settings(), store=RedisStore(shared_redis.url))
    await plane.start()
    listener = production.pubsub()
    try:
        await make_state(plane)
        info = await plane.backups.create(OPERATOR)
        await plane.flags.set("LLM_RATE_LIMITED", "on", OPERATOR)
        await listener.psubscribe("__keyspace@*__:*")
        before = await _keyspace(production)

        verification = await plane.backups.verify(info.id, OPERATOR)

        assert verification.ok, verification.problems
        touched: dict[int, set[str]] = {}
        while (message := await listener.get_message(timeout=0.5)) is not None:
            if message["type"] != "pmessage":
                continue
            channel = message["channel"].decode()
            db, key = channel.removeprefix("__keyspace@").split("__:", 1)
            touched.setdefault(int(db), set()).add(key)
        # The trial restore ran in the scratch database...
        assert any(":trial:" in key for key in touched.get(VERIFY_DB, set()))
        # ...and in production only the verify's own audit entry was written.
        assert {k for k in touched.get(0, set()) if "audit" not in k} == set()
        after = await _keyspace(production)
        changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
        assert {k for k in changed if b"audit" not in k} == set()
        assert flag_values(plane)["LLM_RATE_LIMITED"][0] is True
        scratch = aioredis.Redis.from_url(shared_redis.url.removesuffix("/0") + f"/{VERIFY_DB}")
        assert await scratch.keys("*") == []  # cleaned up
        await scratch.aclose()
    finally:
        await listener.aclose()
        await production.config_set("notify-keyspace-events", "")
        await plane.close()
        await production.aclose()
        await asyncio.sleep(0)
