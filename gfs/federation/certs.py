"""X.509 material of the federation: entity and registry CAs, node certificates, and
the binding of an entity's CA to its Ed25519 key (docs/trust.md "Transport").

Layout of a TLS directory (`STATE/federation/tls` of a site, `STATE/tls` of a registry):
`ca.pem` + `ca.key` (the entity's or the registry operator's CA), `node.pem` +
`node.key` (this server's certificate), and for sites `registry-ca.pem` (the
registry's CA) and `registry.url`. Keys are written mode 0600 and never overwritten.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gfs.errors import ConfigError, StateError
from gfs.federation.auth import AuthError, EntityKeys, b64d, b64e

CA_CERT, CA_KEY, NODE_CERT, NODE_KEY = "ca.pem", "ca.key", "node.pem", "node.key"
REGISTRY_CA, REGISTRY_URL = "registry-ca.pem", "registry.url"
REGISTRY_NAME = "registry.hutong"
"""The name a registry's certificate carries and its clients check."""
CA_DAYS, NODE_DAYS = 3650, 825
MAX_CA_PEM = 8192
"""Largest CA certificate (PEM bytes) a registry accepts in an entity record."""


def site_name(site: str, entity: str) -> str:
    """The DNS name in site `site`'s certificate, which its clients check."""
    return f"{site}.{entity}.hutong"


def _write_new(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(cn: str, org: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _validity(builder: x509.CertificateBuilder, days: int) -> x509.CertificateBuilder:
    """Valid from 5 minutes ago (clock skew) for `days` (a negative `days`: expired,
    for tests)."""
    now = datetime.datetime.now(datetime.UTC)
    end = now + datetime.timedelta(days=days)
    start = min(now - datetime.timedelta(minutes=5), end - datetime.timedelta(days=1))
    return builder.not_valid_before(start).not_valid_after(end)


def create_ca(directory: Path, org: str, cn: str) -> x509.Certificate:
    """A new CA (P-256, 10 years) written to `directory`; refuses to overwrite one."""
    directory.mkdir(parents=True, exist_ok=True)
    if (directory / CA_KEY).exists():
        raise StateError(f"a CA already exists in {directory}; keep it or remove the "
                         "directory")
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(cn, org)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (_validity(x509.CertificateBuilder(), CA_DAYS)
            .subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                         False), critical=True)
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256()))
    _write_new(directory / CA_KEY, _key_pem(key), 0o600)
    _write_new(directory / CA_CERT, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return cert


def copy_ca(src: Path, dst: Path) -> None:
    """Copy the CA of `src` (another site of the same entity) to `dst`."""
    dst.mkdir(parents=True, exist_ok=True)
    for f, mode in ((CA_KEY, 0o600), (CA_CERT, 0o644)):
        try:
            data = (src / f).read_bytes()
        except FileNotFoundError:
            raise StateError(f"no entity CA in {src}; run `hutong site init` for the "
                             "entity's first site with this version") from None
        _write_new(dst / f, data, mode)


def _alt_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return x509.DNSName(host)


def issue_node(directory: Path, org: str, cn: str, dns: str, host: str | None = None, *,
               days: int = NODE_DAYS) -> x509.Certificate:
    """A certificate for this server (`dns` is the name federation clients check; `host`,
    the address it serves on, is added for other TLS clients), signed by the CA in
    `directory`, usable as server and client certificate; written as
    `node.pem`/`node.key` (replacing an older one)."""
    ca_key = serialization.load_pem_private_key((directory / CA_KEY).read_bytes(), None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise StateError(f"{directory / CA_KEY} is not an EC key")
    ca = load_cert((directory / CA_CERT).read_bytes(), str(directory / CA_CERT))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (_validity(x509.CertificateBuilder(), days)
            .subject_name(_name(cn, org)).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False,
                                         False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName(dns)] + ([_alt_name(host)] if host else [])), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    tmp = directory / (NODE_KEY + ".tmp")
    tmp.unlink(missing_ok=True)
    _write_new(tmp, _key_pem(key), 0o600)
    os.replace(tmp, directory / NODE_KEY)
    (directory / NODE_CERT).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert


def load_cert(pem: bytes, what: str) -> x509.Certificate:
    """One PEM certificate; StateError naming `what` if it is not one."""
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError as e:
        raise StateError(f"{what} is not a PEM certificate: {e}") from None


def _binding_text(entity: str, ca_der: bytes) -> bytes:
    return b"HTCA1\n" + entity.encode() + b"\n" + hashlib.sha256(ca_der).hexdigest().encode()


def sign_ca(keys: EntityKeys, ca_pem: bytes) -> str:
    """The entity key's signature binding CA certificate `ca_pem` to the entity."""
    der = load_cert(ca_pem, "entity CA").public_bytes(serialization.Encoding.DER)
    return b64e(keys.private.sign(_binding_text(keys.name, der)))


def verify_ca(entity: str, ca_pem: str, sig_b64: str, key: Ed25519PublicKey
              ) -> x509.Certificate:
    """The CA certificate of `entity` after checking it is a self-signed CA bound to the
    entity's key by `sig_b64`; AuthError (400) otherwise."""
    if len(ca_pem) > MAX_CA_PEM:
        raise AuthError(f"CA certificate of {entity!r} exceeds {MAX_CA_PEM} bytes", 400,
                        "bad_ca")
    try:
        ca = x509.load_pem_x509_certificate(ca_pem.encode())
        bc = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
        ca.verify_directly_issued_by(ca)
        key.verify(b64d(sig_b64), _binding_text(
            entity, ca.public_bytes(serialization.Encoding.DER)))
    except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        raise AuthError(f"the CA certificate of entity {entity!r} is not a self-signed CA "
                        "signed by the entity's key; register it again with its site",
                        400, "bad_ca") from None
    if not bc.ca:
        raise AuthError(f"the CA certificate of entity {entity!r} is not a CA", 400, "bad_ca")
    return ca


def issued_by(leaf_der: bytes, ca: x509.Certificate) -> bool:
    """Whether the certificate `leaf_der` was signed by `ca`."""
    try:
        x509.load_der_x509_certificate(leaf_der).verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def check_registry_ca(registry: str, registry_ca: bytes | None) -> None:
    """ConfigError unless `registry_ca` is a certificate, or absent for a plain http://
    registry (development only)."""
    if registry_ca is None:
        if registry.startswith("https://"):
            raise ConfigError(f"the CA of registry {registry} is needed to check it: pass "
                              "--registry-ca FILE (the registry's STATE/tls/ca.pem)")
        return
    try:
        x509.load_pem_x509_certificate(registry_ca)
    except ValueError:
        raise ConfigError("--registry-ca is not a PEM certificate; pass the registry's "
                          "STATE/tls/ca.pem") from None


def init_site_tls(directory: Path, *, site: str, entity: str, registry: str,
                  registry_ca: bytes | None, ca_from: Path | None) -> None:
    """A site's TLS directory: the entity CA (new, or copied from `ca_from`, another
    site's directory of the same entity), the site's certificate, and the registry's
    URL and CA it pins."""
    check_registry_ca(registry, registry_ca)
    if ca_from is not None:
        copy_ca(ca_from, directory)
    else:
        create_ca(directory, entity, f"Hutong entity CA {entity}")
    issue_node(directory, entity, site, site_name(site, entity))
    if registry_ca is not None:
        _write_new(directory / REGISTRY_CA, registry_ca, 0o644)
    (directory / REGISTRY_URL).write_text(registry.rstrip("/") + "\n")


def registry_tls(root: Path, host: str) -> Path:
    """The registry's TLS directory `root/tls`, with its CA created the first time and
    a certificate for `host` issued at every start; `ca.pem` there is what sites and
    users pin (`--registry-ca`)."""
    d = root / "tls"
    if not (d / CA_KEY).exists():
        create_ca(d, "registry", "Hutong registry CA")
    if not _covers(d, host):
        issue_node(d, "registry", "registry", REGISTRY_NAME, host)
    return d


def site_serve_tls(directory: Path, site: str, entity: str, host: str) -> None:
    """Make the certificate of site `site` name `host` too (a new one from the entity
    CA kept in `directory` if it does not)."""
    if not _covers(directory, host):
        issue_node(directory, entity, site, site_name(site, entity), host)


def _covers(directory: Path, host: str) -> bool:
    """Whether the node certificate in `directory` exists and names `host`."""
    try:
        cert = load_cert((directory / NODE_CERT).read_bytes(), "node certificate")
        alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (FileNotFoundError, StateError, x509.ExtensionNotFound):
        return False
    return _alt_name(host) in list(alt)


def ca_fields(keys: EntityKeys) -> dict[str, str]:
    """`{"ca", "ca_sig"}` of an entity's registration: its CA (from the TLS directory
    beside `keys`) and the key's signature binding it; empty without one."""
    if keys.directory is None or not (keys.directory / "tls" / CA_CERT).exists():
        return {}
    pem = (keys.directory / "tls" / CA_CERT).read_bytes()
    return {"ca": pem.decode("ascii"), "ca_sig": sign_ca(keys, pem)}
