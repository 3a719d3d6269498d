"""The BITS upload server (`openbits upload-server`): IIS's BITS extension, for Linux.

It serves the BITS upload protocol ([MC-BUP]; bits-spec §6) for URL paths under a root
directory, as an aiohttp application (`app.make_app`, or `app.make_subapp` to mount it in
another application). One job a module:

- ``protocol``  sans-I/O: packet types, Content-Range, the protocol GUID, the Acks and the
                BITS errors (`UploadFailure`: HTTP status, HRESULT, context)
- ``config``    the settings: TOML with per-directory overrides
- ``paths``     URL path → directory fd and file name under the root, walked without symlinks
- ``sessions``  the session records (a state directory, written durably) and the partial files
- ``notify``    the server-application notification (by value / by reference) and its reply
- ``uploads``   the sessions' operations: Create, Fragment, Close, Cancel, expiry
- ``urls``      the upload URLs of a request: the client's, the server's own, the application's
- ``app``       the aiohttp handlers and Acks, the lifecycle, the session cleanup task
"""

from openbits.uploadserver.app import make_app, make_subapp
from openbits.uploadserver.config import DirSettings, ServerSettings

__all__ = ["DirSettings", "ServerSettings", "make_app", "make_subapp"]
