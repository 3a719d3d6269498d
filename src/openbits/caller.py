"""Who is calling: the Unix user behind a request."""

from __future__ import annotations

import grp
import pwd
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Caller:
    user: str
    uid: int
    gid: int
    is_admin: bool = False

    @classmethod
    def from_uid(cls, uid: int, admin_group: str = "openbits-admin") -> Caller:
        try:
            pw = pwd.getpwuid(uid)
            name, gid = pw.pw_name, pw.pw_gid
        except KeyError:
            name, gid = str(uid), uid
        admin = uid == 0
        if not admin:
            try:
                group = grp.getgrnam(admin_group)
                admin = name in group.gr_mem or gid == group.gr_gid
            except KeyError:
                admin = False
        return cls(user=name, uid=uid, gid=gid, is_admin=admin)


def primary_gid(uid: int) -> int:
    try:
        return pwd.getpwuid(uid).pw_gid
    except KeyError:
        return uid
