"""Development secrets: NATS passwords and event signing keys for a local Lotgate.

`lotgate run` keeps them in `.lotgate/secrets/` (not committed), the tests in a temporary
directory. Created once and reused, so a restarted broker and services agree; nothing
here is used in production, where they come from mounted secrets (deploy/, k8s/).

    secrets/
      nats/<user>.password            one per NATS user (shared.nats_auth.USERS)
      signing/<service>.pem           each service's Ed25519 private key
      event-public-keys.json          every service's public key (shared.signing)
"""

from __future__ import annotations

import json
import os
import secrets as random
import sys
from dataclasses import dataclass
from pathlib import Path

from shared import nats_auth
from shared.signing import EventSigner, new_private_key_pem, public_key_entry, public_key_of_pem


@dataclass(frozen=True)
class DevSecrets:
    root: Path

    def ensure(self) -> DevSecrets:
        """Create whatever is missing; keep what exists."""
        for folder in (self.root, self.root / "nats", self.root / "signing"):
            folder.mkdir(parents=True, exist_ok=True)
            os.chmod(folder, 0o700)
        for user in nats_auth.USERS:
            _write_new(self.password_file(user), random.token_urlsafe(32).encode())
        for service in nats_auth.SERVICES:
            _write_new(self.signing_key_file(service), new_private_key_pem())
        self._publish_public_keys()
        return self

    def _publish_public_keys(self) -> None:
        """Every service's current public key in the keys file; keys added to it by hand
        (a rotation under way) stay."""
        path = self.public_keys_file
        entries = json.loads(path.read_text())["keys"] if path.exists() else []
        have = {entry.get("key_id") for entry in entries}
        for service in nats_auth.SERVICES:
            key = public_key_of_pem(self.signing_key_file(service).read_bytes())
            entry = public_key_entry(service, key)
            if entry["key_id"] not in have:
                entries.append(entry)
        write_public_keys(path, entries)

    def password_file(self, user: str) -> Path:
        return self.root / "nats" / f"{user}.password"

    def password(self, user: str) -> str:
        return self.password_file(user).read_text().strip()

    def passwords(self) -> dict[str, str]:
        return {user: self.password(user) for user in nats_auth.USERS}

    def signing_key_file(self, service: str) -> Path:
        return self.root / "signing" / f"{service}.pem"

    @property
    def public_keys_file(self) -> Path:
        return self.root / "event-public-keys.json"

    def signer(self, service: str) -> EventSigner:
        """Signs as `service` (tests that stand in for a producer)."""
        return EventSigner.from_file(service, self.signing_key_file(service))

    def service_settings(self, service: str) -> dict[str, str]:
        """The settings (shared.config) a service needs to connect and sign."""
        return {
            "nats_user": service,
            "nats_password_file": str(self.password_file(service)),
            "signing_key_file": str(self.signing_key_file(service)),
            "event_public_keys_file": str(self.public_keys_file),
        }

    def service_env(self, service: str) -> dict[str, str]:
        """The same as LOTGATE_* variables, for a service process."""
        return {f"LOTGATE_{key.upper()}": value
                for key, value in self.service_settings(service).items()}


def write_public_keys(path: Path, entries: list[dict[str, str]]) -> None:
    """Replace the keys file in one step (a reader never sees half of it)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"keys": entries}, indent=2) + "\n")
    os.replace(tmp, path)


def _write_new(path: Path, content: bytes) -> None:
    if path.exists():
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(content)


def main(argv: list[str] | None = None) -> int:
    """`python -m lotgate_tools.dev_secrets DIR`: create the keys and passwords in DIR (for
    deploy/: `deploy/secrets`), keeping any that exist, and print where they are."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m lotgate_tools.dev_secrets DIR", file=sys.stderr)
        return 2
    made = DevSecrets(Path(args[0])).ensure()
    print(f"signing keys:     {made.root / 'signing'}/<service>.pem")
    print(f"public keys:      {made.public_keys_file}")
    print(f"NATS passwords:   {made.root / 'nats'}/<user>.password")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
