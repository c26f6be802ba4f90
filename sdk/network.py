"""A network of organizations: its identities and where each node listens.

``airfed network init DIR --orgs a,b,c`` writes a development network::

    DIR/network.yaml              every organization: node URL, ledger address,
                                  public identity key, certificate fingerprint
    DIR/ca/ca.crt, ca.key         the development certificate authority
    DIR/<org>/node.yaml           how the node of <org> runs
    DIR/<org>/tls/ca.crt          the network CA (to verify peers)
    DIR/<org>/tls/tls.crt, .key   X.509 for TLS, server and client use
    DIR/<org>/identity.key        Ed25519 key that signs receipts and entries
    DIR/orchestrator/...          the same for the orchestrator (Airflow and
                                  the ledger's log), plus log.key

Private keys are written with mode 0600. The same folder is a *profile*: the
CLI's ``--profile DIR/<org>`` reads the organization's TLS files from it.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from airfed.sdk.errors import ConfigError

__all__ = [
    "ORCHESTRATOR_ID",
    "Network",
    "NodeConfig",
    "Organization",
    "client_ssl_context",
    "init_network",
    "load_identity_key",
    "load_network",
    "load_node_config",
    "public_key_b64",
]

ORCHESTRATOR_ID = "orchestrator"
_CERT_DAYS = 825
_DEFAULT_BASE_PORT = 7400


@dataclass(frozen=True)
class Organization:
    """One member of the network as every other member sees it."""

    id: str
    node_url: str
    ledger_address: str
    identity_public_key: str  # raw Ed25519 public key, base64
    role: str = "partner"  # "partner" or "orchestrator"


@dataclass(frozen=True)
class Network:
    name: str
    root: Path
    organizations: tuple[Organization, ...]
    ledger_address: str
    log_public_key: str
    witness_quorum: int

    def organization(self, org_id: str) -> Organization:
        for org in self.organizations:
            if org.id == org_id:
                return org
        raise ConfigError(
            f"organization {org_id!r} is not in {self.root / 'network.yaml'}; "
            f"known: {', '.join(o.id for o in self.organizations)}"
        )

    @property
    def partners(self) -> tuple[Organization, ...]:
        return tuple(o for o in self.organizations if o.role == "partner")


@dataclass(frozen=True)
class NodeConfig:
    """How one organization's node runs; read from ``DIR/<org>/node.yaml``."""

    organization: str
    home: Path
    network: Network
    host: str
    port: int
    ca_file: Path
    cert_file: Path
    key_file: Path
    identity_key_file: Path
    master_key_file: Path
    database_url: str
    storage_dir: Path
    max_upload_bytes: int
    task_cpu_seconds: int
    task_memory_bytes: int
    task_wall_seconds: int

    @property
    def url(self) -> str:
        return self.network.organization(self.organization).node_url


# --------------------------------------------------------------------------
# Loading


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"{path} does not exist; run 'airfed network init'") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping")
    return data


def _field(data: dict[str, Any], name: str, path: Path) -> Any:
    if name not in data:
        raise ConfigError(f"{path} lacks the field {name!r}")
    return data[name]


def load_network(path: Path) -> Network:
    """Read ``network.yaml`` (or the folder that holds it)."""
    path = Path(path)
    if path.is_dir():
        path = path / "network.yaml"
    data = _read_yaml(path)
    orgs = tuple(
        Organization(
            id=str(_field(o, "id", path)),
            node_url=str(o.get("node_url", "")),
            ledger_address=str(o.get("ledger_address", "")),
            identity_public_key=str(_field(o, "identity_public_key", path)),
            role=str(o.get("role", "partner")),
        )
        for o in _field(data, "organizations", path)
    )
    return Network(
        name=str(data.get("name", "airfed")),
        root=path.parent.resolve(),
        organizations=orgs,
        ledger_address=str(_field(data, "ledger_address", path)),
        log_public_key=str(_field(data, "log_public_key", path)),
        witness_quorum=int(data.get("witness_quorum", 1)),
    )


def load_node_config(path: Path) -> NodeConfig:
    """Read ``DIR/<org>/node.yaml``; relative paths are relative to its folder."""
    path = Path(path).resolve()
    if path.is_dir():
        path = path / "node.yaml"
    data = _read_yaml(path)
    home = path.parent

    def rel(value: str) -> Path:
        p = Path(value)
        return p if p.is_absolute() else home / p

    network = load_network(rel(str(data.get("network", "../network.yaml"))))
    tls = _field(data, "tls", path)
    limits = data.get("task_limits", {})
    db_url = str(data.get("database_url", "sqlite:///node.db"))
    if db_url.startswith("sqlite:///") and not db_url.startswith("sqlite:////"):
        db_url = "sqlite:///" + str(rel(db_url.removeprefix("sqlite:///")))
    return NodeConfig(
        organization=str(_field(data, "organization", path)),
        home=home,
        network=network,
        host=str(data.get("host", "127.0.0.1")),
        port=int(_field(data, "port", path)),
        ca_file=rel(str(_field(tls, "ca", path))),
        cert_file=rel(str(_field(tls, "cert", path))),
        key_file=rel(str(_field(tls, "key", path))),
        identity_key_file=rel(str(data.get("identity_key", "identity.key"))),
        master_key_file=rel(str(data.get("master_key", "master.key"))),
        database_url=os.environ.get("AIRFED_NODE_DATABASE_URL", db_url),
        storage_dir=rel(str(data.get("storage_dir", "storage"))),
        max_upload_bytes=int(data.get("max_upload_bytes", 4 * 1024**3)),
        task_cpu_seconds=int(limits.get("cpu_seconds", 600)),
        task_memory_bytes=int(limits.get("memory_bytes", 4 * 1024**3)),
        task_wall_seconds=int(limits.get("wall_seconds", 1800)),
    )


def load_identity_key(path: Path) -> ed25519.Ed25519PrivateKey:
    key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ConfigError(f"{path} does not hold an Ed25519 private key")
    return key


def public_key_b64(key: ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey) -> str:
    public = key.public_key() if isinstance(key, ed25519.Ed25519PrivateKey) else key
    raw = public.public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return base64.b64encode(raw).decode()


def client_ssl_context(profile: Path) -> ssl.SSLContext:
    """A TLS context that presents the profile's certificate and trusts the CA."""
    tls = Path(profile) / "tls"
    ctx = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=str(tls / "ca.crt")
    )
    ctx.load_cert_chain(str(tls / "tls.crt"), str(tls / "tls.key"))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


# --------------------------------------------------------------------------
# Creating a development network


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    path.chmod(0o600)


def _pem_private(key: Any) -> bytes:
    return bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, common_name),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _make_ca(name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(f"{name} CA"))
        .issuer_name(_name(f"{name} CA"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=_CERT_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _make_leaf(
    org_id: str,
    host: str,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    alt_names: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.DNSName(f"{org_id}.airfed.local"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    try:
        ip = ipaddress.ip_address(host)
        if str(ip) != "127.0.0.1":
            alt_names.append(x509.IPAddress(ip))
    except ValueError:
        alt_names.append(x509.DNSName(host))
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(org_id))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=_CERT_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _write_identity(
    home: Path,
    org_id: str,
    host: str,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
) -> ed25519.Ed25519PrivateKey:
    tls_key, tls_cert = _make_leaf(org_id, host, ca_key, ca_cert)
    tls = home / "tls"
    tls.mkdir(parents=True, exist_ok=True)
    (tls / "ca.crt").write_bytes(_pem_cert(ca_cert))
    (tls / "tls.crt").write_bytes(_pem_cert(tls_cert))
    _write_private(tls / "tls.key", _pem_private(tls_key))
    identity = ed25519.Ed25519PrivateKey.generate()
    _write_private(home / "identity.key", _pem_private(identity))
    return identity


def _refuse_overwrite(root: Path, org_ids: list[str]) -> None:
    existing = [
        p
        for p in [root / "ca" / "ca.key"]
        + [root / o / "identity.key" for o in org_ids]
        + [root / o / "tls" / "tls.key" for o in org_ids]
        if p.exists()
    ]
    if existing:
        raise ConfigError(
            f"{root} already holds keys ({existing[0]}); "
            "pass --force to replace every key of the network"
        )


def _validate_org_ids(org_ids: list[str]) -> None:
    if not org_ids:
        raise ConfigError("give at least one organization, e.g. --orgs a,b,c")
    if len(set(org_ids)) != len(org_ids):
        raise ConfigError("organization ids must be unique")
    for org in org_ids:
        if not org or not all(c.isalnum() or c in "-_" for c in org):
            raise ConfigError(
                f"organization id {org!r} may hold only letters, digits, '-' and '_'"
            )
        if org == ORCHESTRATOR_ID:
            raise ConfigError(f"{ORCHESTRATOR_ID!r} is reserved for the orchestrator")


def init_network(
    root: Path,
    org_ids: list[str],
    *,
    host: str = "127.0.0.1",
    base_port: int = _DEFAULT_BASE_PORT,
    name: str = "airfed-dev",
    witness_quorum: int | None = None,
    force: bool = False,
) -> Network:
    """Create a development network in ``root``; see the module docstring.

    Ports: the ledger's log listens on ``base_port``, the node of the i-th
    organization on ``base_port + 1 + i`` and its ledger replica on
    ``base_port + 1 + n + i``; a network of n organizations uses 2n + 1 ports.
    """
    _validate_org_ids(org_ids)
    root = Path(root).resolve()
    if not force:
        _refuse_overwrite(root, [*org_ids, ORCHESTRATOR_ID])
    root.mkdir(parents=True, exist_ok=True)

    ca_key, ca_cert = _make_ca(name)
    (root / "ca").mkdir(exist_ok=True)
    (root / "ca" / "ca.crt").write_bytes(_pem_cert(ca_cert))
    _write_private(root / "ca" / "ca.key", _pem_private(ca_key))

    orgs: list[dict[str, Any]] = []
    for index, org_id in enumerate(org_ids):
        home = root / org_id
        identity = _write_identity(home, org_id, host, ca_key, ca_cert)
        _write_private(home / "master.key", os.urandom(32))
        port = base_port + 1 + index
        node_yaml = {
            "organization": org_id,
            "network": "../network.yaml",
            "host": host,
            "port": port,
            "tls": {"ca": "tls/ca.crt", "cert": "tls/tls.crt", "key": "tls/tls.key"},
            "identity_key": "identity.key",
            "master_key": "master.key",
            "database_url": "sqlite:///node.db",
            "storage_dir": "storage",
            "ledger_replica_port": base_port + 1 + len(org_ids) + index,
        }
        (home / "node.yaml").write_text(yaml.safe_dump(node_yaml, sort_keys=False))
        orgs.append(
            {
                "id": org_id,
                "role": "partner",
                "node_url": f"https://{host}:{port}",
                "ledger_address": f"{host}:{base_port + 1 + len(org_ids) + index}",
                "identity_public_key": public_key_b64(identity),
            }
        )

    orch = root / ORCHESTRATOR_ID
    orch_identity = _write_identity(orch, ORCHESTRATOR_ID, host, ca_key, ca_cert)
    log_key = ed25519.Ed25519PrivateKey.generate()
    _write_private(orch / "log.key", _pem_private(log_key))
    orgs.append(
        {
            "id": ORCHESTRATOR_ID,
            "role": "orchestrator",
            "node_url": "",
            "ledger_address": f"{host}:{base_port}",
            "identity_public_key": public_key_b64(orch_identity),
        }
    )
    quorum = witness_quorum if witness_quorum is not None else (len(org_ids) // 2) + 1
    network_yaml = {
        "name": name,
        "ca": "ca/ca.crt",
        "ledger_address": f"{host}:{base_port}",
        "log_public_key": public_key_b64(log_key),
        "witness_quorum": quorum,
        "organizations": orgs,
    }
    (root / "network.yaml").write_text(yaml.safe_dump(network_yaml, sort_keys=False))
    return load_network(root / "network.yaml")
