"""bitsadmin's usage text, the lines of it for one switch, and the Usage error."""

from __future__ import annotations

USAGE = """\
BITSADMIN version 3.0 (openbits)
USAGE: BITSADMIN [/RAWRETURN] [/WRAP | /NOWRAP] command
The following commands are available:

/HELP                                    Prints this help
/?                                       Prints this help
/LIST    [/ALLUSERS] [/VERBOSE]          List the jobs
/MONITOR [/ALLUSERS] [/REFRESH sec]      Monitors the copy manager (Ctrl-C stops it)
/RESET   [/ALLUSERS]                     Cancels all the jobs in the manager

/TRANSFER name [type] [/PRIORITY priority] [/ACLFLAGS flags] [/DYNAMIC]
          remote_url local_name [remote_url local_name ...]
    Transfers one or more files and waits: progress, then "Transfer complete."
    [type] may be /DOWNLOAD or /UPLOAD; default is download.
    Unlike most commands, name may only be a name and not a GUID.

/CREATE [type] display_name              Creates a job
    [type] may be /DOWNLOAD, /UPLOAD, or /UPLOAD-REPLY; default is download

/INFO job [/VERBOSE]                     Displays information about the job
/ADDFILE job remote_url local_name       Adds a file to the job
/ADDFILESET job textfile                 Adds the files listed in textfile to the job
    Each line of textfile lists a file's remote name and local name, separated
    by spaces. A line beginning with '#' is treated as a comment.
/ADDFILEWITHRANGES job remote_url local_name range_list
    Adds the ranges of a remote file: range_list is offset:length[,offset:length...];
    a length of eof reads to the end of the file.
/REPLACEREMOTEPREFIX job old_prefix new_prefix
                                         Changes the remote URLs that start with old_prefix
/LISTFILES job                           Lists the files in the job
/SUSPEND job                             Suspends the job
/RESUME job                              Resumes the job
/CANCEL job                              Cancels the job
/COMPLETE job                            Completes the job

/GETTYPE job                             Retrieves the job type
/GETREPLYFILENAME job                    Gets the path of the file that contains the server reply
/SETREPLYFILENAME job path               Sets the path of the file that contains the server reply
/GETREPLYPROGRESS job                    Gets the size and progress of the server reply
/GETREPLYDATA job                        Gets the server's reply data in hexadecimal format
/GETACLFLAGS job                         Retrieves the ACL propagation flags
/SETACLFLAGS job flags                   Sets the ACL propagation flags (O, G, D, S)
/GETBYTESTOTAL job                       Retrieves the size of the job
/GETBYTESTRANSFERRED job                 Retrieves the number of bytes transferred
/GETFILESTOTAL job                       Retrieves the number of files in the job
/GETFILESTRANSFERRED job                 Retrieves the number of files transferred
/GETCREATIONTIME job                     Retrieves the job creation time
/GETMODIFICATIONTIME job                 Retrieves the job modification time
/GETCOMPLETIONTIME job                   Retrieves the job completion time
/GETSTATE job                            Retrieves the job state
/GETERROR job                            Retrieves detailed error information
/GETOWNER job                            Retrieves the job owner
/GETDISPLAYNAME job                      Retrieves the job display name
/SETDISPLAYNAME job display_name         Sets the job display name
/GETDESCRIPTION job                      Retrieves the job description
/SETDESCRIPTION job description          Sets the job description
/GETPRIORITY job                         Retrieves the job priority
/SETPRIORITY job priority                Sets the job priority
    priority may be FOREGROUND, HIGH, NORMAL or LOW
/GETNOTIFYFLAGS job                      Retrieves the notify flags
/SETNOTIFYFLAGS job notify_flags         Sets the notify flags
/GETNOTIFYINTERFACE job                  Determines if notify interface is registered
/GETMINRETRYDELAY job                    Retrieves the retry delay in seconds
/SETMINRETRYDELAY job retry_delay        Sets the retry delay in seconds
/GETNOPROGRESSTIMEOUT job                Retrieves the no progress timeout in seconds
/SETNOPROGRESSTIMEOUT job timeout        Sets the no progress timeout in seconds
/GETMAXDOWNLOADTIME job                  Retrieves the maximum download time in seconds
/SETMAXDOWNLOADTIME job timeout          Sets the maximum download time in seconds
/GETERRORCOUNT job                       Retrieves an error count for the job
/GETHTTPMETHOD job                       Retrieves the HTTP verb of the job
/GETPEERCACHINGFLAGS job                 Retrieves the peer caching flags
/GETCUSTOMHEADERS job                    Retrieves the custom HTTP headers
/SETCUSTOMHEADERS job header1 [header2 ...]
                                         Sets the custom HTTP headers (NULL removes them)
/MAKECUSTOMHEADERSWRITEONLY job          Makes the custom headers write-only (irreversible)
/GETSECURITYFLAGS job                    Retrieves the HTTP security flags
/SETSECURITYFLAGS job value              Sets the HTTP security flags

/SETPROXYSETTINGS job usage              Sets the proxy usage
   usage choices:
    PRECONFIG   - Use the owner's default settings.
    AUTODETECT  - Detect the proxy settings.
    NO_PROXY    - Do not use a proxy server.
    OVERRIDE    - Use an explicit proxy list and bypass list.
                  Must be followed by a proxy list and a proxy bypass list.
                  NULL or "" may be used for an empty proxy bypass list.
/GETPROXYUSAGE job                       Retrieves the proxy usage setting
/GETPROXYLIST job                        Retrieves the proxy list
/GETPROXYBYPASSLIST job                  Retrieves the proxy bypass list

/TAKEOWNERSHIP job                       Takes ownership of the job
/SETNOTIFYCMDLINE job program_name [program_parameters]
    Sets a program to execute for notification, and optionally parameters.
    The program name and parameters can be NULL.
/GETNOTIFYCMDLINE job                    Returns the job's notification command line
/SETCREDENTIALS job <target> <scheme> <username> <password>
    Adds credentials to a job.
    <target> may be either SERVER or PROXY
    <scheme> may be BASIC, DIGEST, NTLM, NEGOTIATE, or PASSPORT.
    <password> * (or -) reads it from stdin, or asks for it on a terminal.
/REMOVECREDENTIALS job <target> <scheme>
    Removes credentials from a job.
/SETCLIENTCERTIFICATEBYID job store_location store_name hexadecimal_cert_id
/SETCLIENTCERTIFICATEBYNAME job store_location store_name subject_name
    store_location: CURRENT_USER (1), LOCAL_MACHINE (2), CURRENT_SERVICE (3), SERVICES (4),
    USERS (5), CURRENT_USER_GROUP_POLICY (6), LOCAL_MACHINE_GROUP_POLICY (7),
    LOCAL_MACHINE_ENTERPRISE (8)
/REMOVECLIENTCERTIFICATE job             Removes the client certificate of the job
/GETCLIENTCERTIFICATE job                Retrieves the client certificate of the job

The following options can be placed before the command:
/RAWRETURN                               Return data more suitable for parsing
/WRAP                                    Wrap output around console (default)
/NOWRAP                                  Don't wrap output around console

The /RAWRETURN option strips new line characters and formatting.
It is recognized by the /CREATE and /GET* commands.

Commands that take a job parameter will accept either a job name or a job-ID
GUID inside braces. BITSADMIN reports an error if a name is ambiguous.
"""


class Usage(Exception):
    """Bad usage: the reason is printed, then the usage text; exit 1."""


def switch_usage(name: str) -> str:
    """The lines of USAGE that describe one switch (bad arguments print them)."""
    lines: list[str] = []
    for line in USAGE.splitlines():
        if lines and (not line.strip() or line.startswith("/")):
            break
        if lines or line.upper().startswith(name + " ") or line.upper() == name:
            lines.append(line)
    return "\n".join(lines) + "\n" if lines else USAGE
