"""Who may reach a service: the `access_sources` filter turns the inventory's
client hosts and an operator's extra list into the address sets the access
firewall allows (templates/access.nft.j2).

Plain Python on purpose: the roles call it as a filter, and pytest calls it
directly (tests/test_role_files.py)."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Mapping
from typing import Any

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class AccessError(ValueError):
    """An address that cannot be allowed: the message names it."""


def _networks(entry: str) -> list[Network]:
    """ENTRY as networks: an address or CIDR as written, a name as every
    address it resolves to on the controller now."""
    try:
        return [ipaddress.ip_network(entry, strict=False)]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(entry, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as err:
        raise AccessError(f"cannot allow {entry!r}: not an address or network, and it does not resolve ({err})") \
            from None
    return [ipaddress.ip_network(info[4][0]) for info in infos]


def host_address(host: Mapping[str, Any]) -> str:
    """How the inventory reaches a host: ansible_host, else its name."""
    return str(host.get("ansible_host") or host.get("inventory_hostname") or "")


def access_sources(hosts: Iterable[Mapping[str, Any]], extra: Iterable[str] = ()) -> dict[str, list[str]]:
    """{'ipv4': [...], 'ipv6': [...]}: the networks of HOSTS (hostvars) and EXTRA, merged and sorted."""
    found: dict[int, set[Network]] = {4: set(), 6: set()}
    for entry in [*(host_address(h) for h in hosts), *(str(e).strip() for e in extra)]:
        if not entry:
            raise AccessError("cannot allow an empty address")
        for network in _networks(entry):
            found[network.version].add(network)
    return {f"ipv{version}": [str(n) for n in ipaddress.collapse_addresses(sorted(nets))]  # type: ignore[type-var]
            for version, nets in found.items()}


def _filter(hosts: Iterable[Mapping[str, Any]], extra: Iterable[str] = ()) -> dict[str, list[str]]:
    try:
        return access_sources(hosts, extra)
    except AccessError as err:
        from ansible.errors import AnsibleFilterError

        raise AnsibleFilterError(str(err)) from None


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"access_sources": _filter, "host_address": host_address}
