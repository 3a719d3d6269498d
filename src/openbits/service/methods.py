"""The instance methods of BitsClientJob (SPEC §2, §6), by their WMI names: their
parameters and which are not built yet.  Plain data: the API, its OpenAPI document and
the CLIs read it without loading the service."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Method:
    """An instance method: its WMI name, the names of its parameters (in the order an
    error message lists them), and whether it is built (else it answers E_NOTIMPL)."""

    name: str
    params: tuple[str, ...] = ()
    implemented: bool = True

    @property
    def key(self) -> str:
        """The name a call is matched by (WMI names are case-insensitive)."""
        return self.name.lower()


_ALL = (
    Method("AddFile", ("RemoteUrl", "LocalFile", "Digest")),
    Method("AddFileSet", ("Files",)),
    Method("AddFileWithRanges", ("RemoteUrl", "LocalFile", "Ranges", "Digest")),
    Method("SetJobState", ("JobState",)),
    Method("GetError", ("LanguageId",)),
    Method("SetMaximumDownloadTime", ("MaximumDownloadTime",)),
    Method("SetCustomHeaders", ("CustomHeaders",)),
    Method("SetSecurityFlags", ("SecurityFlags",)),
    Method("SetRemoteName", ("LocalFile", "RemoteUrl")),
    Method("ReplaceRemotePrefix", ("OldPrefix", "NewPrefix")),
    Method("GetResponseHeaders", ("LocalFile",)),
    Method("SetNotifyFlags", ("NotifyFlags",)),
    Method("SetNotifyCmdLine", ("Program", "Parameters")),
    Method("SetNotifyUrl", ("NotifyUrl",)),
    Method("MakeCustomHeadersWriteOnly"),
    Method("TakeOwnership"),
    Method("SetClientCertificateById", ("CertStoreLocation", "StoreName", "CertHash")),
    Method("SetClientCertificateByName", ("CertStoreLocation", "StoreName", "SubjectName")),
    Method("RemoveClientCertificate"),
    Method("SetCredentials", ("Target", "Scheme", "UserName", "Password")),
    Method("RemoveCredentials", ("Target", "Scheme")),
    Method("SetProxySettings", ("ProxyUsage", "ProxyList", "ProxyBypassList")),
    # upload-reply jobs (SPEC §8); E_NOTIMPL for the others, as BITS
    Method("GetReplyData"),
    Method("SetReplyFileName", ("ReplyFileName",)),
)

#: every instance method the service answers (built or E_NOTIMPL), by lower-case name
METHODS: dict[str, Method] = {m.key: m for m in _ALL}


def method(name: str) -> Method | None:
    """The method called ``name`` in any case; None when BitsClientJob has none."""
    return METHODS.get(name.lower())
