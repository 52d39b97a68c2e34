"""How one host of the fleet reaches another: gearmand server lists, Redis
endpoints and URLs, host:port with IPv6 brackets. The roles call these as
filters over the inventory's hostvars; pytest calls them directly
(tests/test_role_files.py).

A host's address is what it advertises (`gearmand_advertise_address`,
`redis_advertise_address`), else `ansible_host`, else its inventory name:
role defaults of other hosts are not visible, so only what the inventory
says of them counts."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote

GEARMAND_PORT, REDIS_PORT = 4730, 6379


def host_port(address: str, port: int | str) -> str:
    """ADDRESS:PORT, an IPv6 address in brackets ([::1]:9810)."""
    address = str(address)
    return f"[{address}]:{int(port)}" if ":" in address and not address.startswith("[") else f"{address}:{int(port)}"


def inventory_address(host: Mapping[str, Any], advertised: str) -> str:
    """HOST's (hostvars) address for others: its ADVERTISED variable, else
    ansible_host, else its name."""
    return str(host.get(advertised) or host.get("ansible_host") or host.get("inventory_hostname") or "")


def gearmand_servers(hosts: Iterable[Mapping[str, Any]], explicit: Iterable[str] = ()) -> list[str]:
    """The pools' gearmand list: EXPLICIT when given, else every host of
    HOSTS (the gearmand group's hostvars) at its port."""
    given = [str(server) for server in explicit]
    if given:
        return given
    return [host_port(inventory_address(h, "gearmand_advertise_address"), h.get("gearmand_port") or GEARMAND_PORT)
            for h in hosts]


def redis_endpoint(host: Mapping[str, Any] | None) -> dict[str, Any]:
    """{'address': host:port, 'tls': bool, 'ca': file} of the Redis on HOST
    (hostvars; None: no Redis, address ''). Its TLS port when it has one."""
    if not host:
        return {"address": "", "tls": False, "ca": ""}
    tls = int(host.get("redis_tls_port") or 0) > 0
    port = host["redis_tls_port"] if tls else (host.get("redis_port") or REDIS_PORT)
    return {"address": host_port(inventory_address(host, "redis_advertise_address"), port), "tls": tls,
            "ca": str(host.get("redis_tls_ca") or "") if tls else ""}


def redis_url(endpoint: Mapping[str, Any], user: str, password: str, ca_path: str = "") -> str:
    """The URL a client of ENDPOINT logs in with: USER and PASSWORD
    percent-encoded ('/' too), so that any character is safe; with TLS,
    rediss:// and the CA file at CA_PATH. '' when there is no Redis."""
    if not endpoint.get("address"):
        return ""
    scheme, query = ("rediss", f"?ssl_ca_certs={ca_path}") if endpoint.get("tls") else ("redis", "")
    credentials = f"{quote(str(user), safe='')}:{quote(str(password).strip(), safe='')}"
    return f"{scheme}://{credentials}@{endpoint['address']}/0{query}"


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"host_port": host_port, "inventory_address": inventory_address, "gearmand_servers": gearmand_servers,
                "redis_endpoint": redis_endpoint, "redis_url": redis_url}
