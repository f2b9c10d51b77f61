"""What check-config and the VEN can tell about the files and clock of this machine: the TLS files, whether
storage.path can be written, the machine's time zone against forecaster.timezone, whether its clock is kept
synchronized. Not load-time checks: a config is valid wherever it is read; these say what this machine, as this
user, will make of it.
"""
from __future__ import annotations

import os
import pwd
import resource
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from .clock_sync import NOT_SYNCHRONIZED, ClockSync, read_clock_sync

if TYPE_CHECKING:   # the section models only annotate here: ven.config imports this module
    from .config import OpenadrConfig, StorageConfig


def key_is_encrypted(path: str) -> bool:
    """Whether the PEM private key at `path` needs a passphrase (False when unreadable: others say why)."""
    from cryptography.hazmat.primitives import serialization

    try:
        serialization.load_pem_private_key(Path(path).read_bytes(), None)
    except TypeError:
        return True
    except (OSError, ValueError):
        pass
    return False


def tls_file_problems(c: OpenadrConfig) -> list[str]:
    """What is wrong with the TLS files, one line per key, for check-config and before each
    registration. Not a load-time check: `run` keeps retrying, so certificates mounted after start
    (secrets, a late volume) still work."""
    import datetime
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    problems: list[str] = []
    cert_, key_, pass_, ca_ = (c.named(k) for k in ("cert", "key", "passphrase", "ca_file"))

    def read(name: str, path: str) -> bytes | None:
        try:
            return Path(path).read_bytes()
        except OSError as err:
            problems.append(f"{name}: {looked_for(path)}: {err.strerror}")
            return None

    if c.cert:
        cert_pem, key_pem = read(cert_, c.cert), read(key_, c.key)
        cert = key = None
        if cert_pem is not None:
            try:
                cert = x509.load_pem_x509_certificate(cert_pem)
            except (ValueError, x509.InvalidVersion):    # InvalidVersion is no ValueError
                problems.append(f"{cert_}: {c.cert}: not a PEM certificate")
            else:  # a VTN refuses these after the handshake: the VEN only sees the connection drop
                now = datetime.datetime.now(datetime.timezone.utc)
                if cert.not_valid_after_utc < now:
                    problems.append(f"{cert_}: {c.cert}: expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
                elif cert.not_valid_before_utc > now:
                    problems.append(f"{cert_}: {c.cert}: not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} "
                                    "UTC (is this machine's clock right?)")
        if key_pem is not None:
            try:
                key = serialization.load_pem_private_key(key_pem, c.passphrase.encode() or None)
            except TypeError:  # encrypted without a passphrase, or a passphrase for a plain key
                if c.passphrase:
                    key = serialization.load_pem_private_key(key_pem, None)
                else:
                    problems.append(f"{pass_}: {key_} {c.key} is encrypted: give its passphrase")
            except ValueError:
                # with no passphrase there is nothing to blame but the file: an empty one, a certificate given as
                # the key, said "openadr.passphrase: does not decrypt", of a passphrase never set
                problems.append(f"{pass_}: does not decrypt {key_} {c.key} (or the key is not a PEM private key)"
                                if c.passphrase else f"{key_}: {c.key}: "
                                f"{'empty' if not key_pem.strip() else 'not a PEM private key'}")
        spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        if cert is not None and key is not None and cert.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
            problems.append(f"{cert_} and {key_} do not belong together: {c.cert} is not the "
                            f"certificate of {c.key}")
    if c.ca_file:
        try:
            ssl.create_default_context(cafile=c.ca_file)
        except (OSError, ssl.SSLError) as err:
            where = c.ca_file if isinstance(err, ssl.SSLError) else looked_for(c.ca_file)
            # OpenSSL's own words ("[X509: NO_CERTIFICATE_OR_CRL_FOUND] no certificate or crl found (_ssl.c:4154)")
            # say little to an installer handed the wrong file
            why = (f"holds no certificate OpenSSL can read ({err.reason or err}): it takes the VTN's CA certificate, "
                   f"or a bundle, in PEM (-----BEGIN CERTIFICATE-----)" if isinstance(err, ssl.SSLError)
                   else err.strerror or err)
            problems.append(f"{ca_}: {where}: {why}")
    return problems


def looked_for(path: str) -> str:
    # a service's working directory is rarely the one the operator is in when the file is missing
    return path if Path(path).is_absolute() else f"{path} (looked for in {Path.cwd()})"


def storage_problems(c: StorageConfig) -> list[str]:
    """What check-config can tell about storage.path without writing to it: a directory there never opens."""
    try:
        if Path(c.path).is_dir():
            return [f"{c.named('path')}: {c.path} is a directory: name a file in it, e.g. "
                    f"{Path(c.path) / 'gateway.sqlite'}"]
        existing = _nearest_existing(Path(c.path).parent)
        if not existing.is_dir():
            return [f"{c.named('path')}: {c.path}: {existing} is not a directory"]
    except OSError:     # a directory on the way this user may not search: storage_warnings says so
        pass
    return []


def _nearest_existing(p: Path) -> Path:
    p = Path(os.path.abspath(p))
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


# What the file takes on a site: about 16 MB once the forecaster's 44 days are kept, its WAL up to 5 MB, and a
# telemetry backlog while the VTN is away (up to 45 MB a week at a 1 s meter poll)
LOW_SPACE_BYTES = 64 * 2**20


def storage_warnings(c: StorageConfig) -> list[str]:
    """Whether this user could write storage.path, asked without writing. `run` goes on without it
    (from memory, retrying), so this is a warning; it speaks for the user check-config runs as."""
    return _writable_warnings(c) + _space_warnings(c)


def _space_warnings(c: StorageConfig) -> list[str]:
    """A file system (nearly) full, or out of inodes: the file's writes fail from the start or soon after."""
    p = Path(c.path)
    try:
        fs = os.statvfs(p if p.exists() else _nearest_existing(p.parent))
    except OSError:
        return []
    free = fs.f_bavail * fs.f_frsize
    after = ("the gateway keeps events, ADR-Opt-Out commands, the telemetry queue and forecaster history in memory "
             "while the file cannot take writes, and a restart loses them")
    if fs.f_files and not fs.f_favail:
        return [f"storage.path {c.path}: its file system has no inodes left (the file's -wal and -shm cannot be "
                f"made): {after}"]
    if free < LOW_SPACE_BYTES:
        return [f"storage.path {c.path}: its file system has {free / 2**20:.1f} MB free for this user: the file needs "
                f"about 20 MB, and more for a telemetry backlog while the VTN is away (45 MB a week at a 1 s "
                f"meter poll); {after}"]
    return []


def _writable_warnings(c: StorageConfig) -> list[str]:
    p = Path(c.path)
    try:
        for where in ([p, p.parent] if p.exists() else [_nearest_existing(p.parent)]):  # WAL: files beside it too
            if not os.access(where, os.W_OK | (os.X_OK if where.is_dir() else 0)):
                if os.statvfs(where).f_flag & os.ST_RDONLY:
                    why = f"{where} is on a read-only file system"
                else:
                    why = f"{where} is not writable by {_user()}"
                break
        else:
            return []
    except OSError as err:      # a directory on the way that this user may not search
        why = f"{_user()} cannot look there ({err.strerror}: {err.filename})"
    return [f"storage.path {c.path}: {why}: `run` keeps events, ADR-Opt-Out commands, the telemetry "
            f"queue and forecaster history in memory only, and a restart loses them"]


def clock_sync_warnings(read: Callable[[], ClockSync | None] = read_clock_sync) -> list[str]:
    """The kernel's word that no time service keeps the clock (none when it says synchronized or cannot tell)."""
    sync = read()
    return [NOT_SYNCHRONIZED] if sync is not None and not sync.synchronized else []


def _user() -> str:
    try:
        return f"user {pwd.getpwuid(os.geteuid()).pw_name}"
    except KeyError:    # a container run with a bare --user UID has no passwd entry
        return f"uid {os.geteuid()}"


def zone_mismatch(zone: str) -> str | None:
    """Two clocks read the building's local time: the BACnet device's localTime/localDate follow the
    machine's zone (TZ, /etc/localtime), the forecaster's time of day, weekdays and holidays follow
    forecaster.timezone. Compared at every hour of this year: zones alike in January and July can still
    change to summer time on other dates (Athens and Jerusalem differ for 51 hours a year)."""
    import datetime
    from zoneinfo import ZoneInfo

    year = datetime.datetime.now(datetime.timezone.utc).year
    first = datetime.datetime(year, 1, 1, tzinfo=datetime.timezone.utc)
    building = ZoneInfo(zone)
    both = lambda t: (t.astimezone().utcoffset(), t.astimezone(building).utcoffset())
    # Every 6 hours, and hour by hour only where either zone's offset changes (a few times a year): this runs
    # before the BACnet device starts: every hour took 36 ms on 2 cores under load, this 11 ms
    hour, differ, since = datetime.timedelta(hours=1), 0, None
    t, now = first, both(first)
    while t.year == year:
        later = both(t + 6 * hour)
        hours = [t + h * hour for h in range(6)]
        odd = (hours if now[0] != now[1] else []) if later == now else [u for u in hours if len(set(both(u))) > 1]
        differ, since = differ + len(odd), since or (odd[0] if odd else None)
        t, now = t + 6 * hour, later
    if not differ:
        return None
    at = [datetime.datetime(year, month, 15, 12, tzinfo=datetime.timezone.utc) for month in (1, 7)]

    def offsets(values) -> str:
        return " / ".join(f"UTC{'-' if v < datetime.timedelta(0) else '+'}{abs(v).seconds // 3600:02d}:"
                          f"{abs(v).seconds // 60 % 60:02d}" for v in values)
    machine = [t.astimezone().utcoffset() for t in at]
    configured = [t.astimezone(building).utcoffset() for t in at]
    if machine != configured:
        how = f"({offsets(configured)} in January / July) is not this machine's clock zone ({offsets(machine)})"
    else:
        how = (f"changes to or from summer time on other dates than this machine's clock zone: they differ for "
               f"{differ} hours of {year}, from {since:%Y-%m-%d %H:%M} UTC")
    return (f"forecaster.timezone {zone!r} {how}: the BACnet device's localTime and localDate follow the machine, "
            f"the forecaster's time of day, weekdays and holidays follow forecaster.timezone. Set both to the "
            f"building's zone (timedatectl set-timezone; in a container, mount /etc/localtime read-only)")


FIT_ADDRESS_SPACE = 380 * 10**6     # measured with 35 days of 1-minute history (README "The box")


def memory_limit_warnings(limit: int | None = None) -> list[str]:
    """A limit on this process's address space (LimitAS, ulimit -v) under what the forecaster's fits need: each
    failed with a line that named a thread or a shared object, not the limit."""
    soft = resource.getrlimit(resource.RLIMIT_AS)[0] if limit is None else limit
    if soft == resource.RLIM_INFINITY or soft >= FIT_ADDRESS_SPACE:
        return []
    return [f"the process may use only {soft / 1e6:.0f} MB of address space (LimitAS, ulimit -v): the forecaster's "
            f"fits need about {FIT_ADDRESS_SPACE / 1e6:.0f} MB and fail short of it (persistence serves meanwhile), "
            "and under about 250 MB the VEN's threads do not start either"]
