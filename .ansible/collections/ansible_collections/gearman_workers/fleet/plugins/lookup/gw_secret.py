"""The `gw_secret` lookup: a secret made once on the controller and kept in
a file (mode 0600) that every later run reads back: Redis passwords, the
control secret. Letters and digits only, so that it needs no quoting in a
URL, a TOML string or a Redis ACL rule.

    lookup('gw_secret', credentials_dir ~ '/redis-operator')            # 32 characters
    lookup('gw_secret', credentials_dir ~ '/control.secret', length=48)

It is ansible.builtin.password with the roles' one choice of characters."""

from __future__ import annotations

from typing import Any

from ansible.plugins.loader import lookup_loader
from ansible.plugins.lookup import LookupBase

DOCUMENTATION = """
name: gw_secret
short_description: a generated secret kept in a file on the controller
description: ansible.builtin.password with letters and digits only.
options:
  _terms:
    description: the file that keeps the secret
    required: true
  length:
    description: characters of a new secret
    type: int
    default: 32
"""
CHARS = ["ascii_letters", "digits"]


class LookupModule(LookupBase):
    def run(self, terms: list[Any], variables: dict[str, Any] | None = None, **kwargs: Any) -> list[str]:
        self.set_options(var_options=variables, direct=kwargs)
        password = lookup_loader.get("ansible.builtin.password", loader=self._loader, templar=self._templar)
        return password.run(terms, variables, length=self.get_option("length"), chars=CHARS)
