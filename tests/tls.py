"""Certificates for a test's own TLS Docker engine, as Docker's docs make them with openssl:
a CA, a server certificate for 127.0.0.1 (serverAuth) and a client certificate
(clientAuth), all signed by that CA. With the `cryptography` package if installed,
else the openssl command line."""

from __future__ import annotations

import datetime
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class EngineCerts:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_engine_certs(directory: Path) -> EngineCerts:
    directory.mkdir(parents=True, exist_ok=True)
    certs = EngineCerts(
        ca=directory / "ca.pem",
        server_cert=directory / "server-cert.pem",
        server_key=directory / "server-key.pem",
        client_cert=directory / "cert.pem",
        client_key=directory / "key.pem",
    )
    try:
        import cryptography  # noqa: F401
    except ImportError:
        _with_openssl(directory, certs)
    else:
        _with_cryptography(certs)
    for key in (certs.server_key, certs.client_key):
        os.chmod(key, 0o600)
    return certs


def _with_cryptography(certs: EngineCerts) -> None:
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(text: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])

    def write_key(key: ec.EllipticCurvePrivateKey, file: Path) -> None:
        file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("claude-hooks test CA"))
        .issuer_name(name("claude-hooks test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
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
        .sign(ca_key, hashes.SHA256())
    )
    certs.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))

    def leaf(common: str, usage: x509.ObjectIdentifier, cert: Path, key_file: Path) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(common))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
        )
        if usage == ExtendedKeyUsageOID.SERVER_AUTH:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
                ),
                critical=False,
            )
        cert.write_bytes(
            builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
        )
        write_key(key, key_file)

    leaf("127.0.0.1", ExtendedKeyUsageOID.SERVER_AUTH, certs.server_cert, certs.server_key)
    leaf("claude-hooks", ExtendedKeyUsageOID.CLIENT_AUTH, certs.client_cert, certs.client_key)


def _with_openssl(directory: Path, certs: EngineCerts) -> None:
    """Docker's own recipe (docs.docker.com, "Protect the Docker daemon socket")."""

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    ca_key = directory / "ca-key.pem"
    run("ecparam", "-genkey", "-name", "prime256v1", "-noout", "-out", str(ca_key))
    run("req", "-new", "-x509", "-days", "1", "-key", str(ca_key), "-sha256",
        "-subj", "/CN=claude-hooks test CA", "-out", str(certs.ca))  # fmt: skip
    for common, usage, cert, key in (
        ("127.0.0.1", "serverAuth", certs.server_cert, certs.server_key),
        ("claude-hooks", "clientAuth", certs.client_cert, certs.client_key),
    ):
        csr, ext = directory / f"{common}.csr", directory / f"{common}.cnf"
        extra = "subjectAltName = IP:127.0.0.1,DNS:localhost\n" if usage == "serverAuth" else ""
        ext.write_text(f"extendedKeyUsage = {usage}\n{extra}")
        run("ecparam", "-genkey", "-name", "prime256v1", "-noout", "-out", str(key))
        run("req", "-new", "-key", str(key), "-subj", f"/CN={common}", "-out", str(csr))
        run("x509", "-req", "-days", "1", "-sha256", "-in", str(csr), "-CA", str(certs.ca),
            "-CAkey", str(ca_key), "-CAcreateserial", "-out", str(cert),
            "-extfile", str(ext))  # fmt: skip
