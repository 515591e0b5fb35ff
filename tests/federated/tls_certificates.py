"""TLS certificates for tests: a fresh CA and a server certificate it signed, made in Python with
cryptography (a dependency of Flower), so the tests need no openssl binary."""

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def certificates(folder: Path, name: str = "") -> dict[str, Path]:
    """A CA and a server certificate signed by it for localhost and 127.0.0.1 (what the README's
    openssl commands make; 127.0.0.1 because the SuperLink's own ServerApp process connects
    there), written into `folder` as {name}ca.crt, {name}server.pem and {name}server.key."""
    now = datetime.datetime.now(datetime.timezone.utc)

    def issue(subject: str, key, issuer: x509.Name, signer, extension: x509.ExtensionType) -> x509.Certificate:
        builder = x509.CertificateBuilder(
            subject_name=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]),
            issuer_name=issuer,
            public_key=key.public_key(),
            serial_number=x509.random_serial_number(),
            not_valid_before=now - datetime.timedelta(minutes=5),
            not_valid_after=now + datetime.timedelta(days=1),
        )
        return builder.add_extension(extension, critical=isinstance(extension, x509.BasicConstraints)).sign(signer, hashes.SHA256())

    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_subject = f"featdiff test CA {name}".strip()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ca_subject)])
    ca = issue(ca_subject, ca_key, ca_name, ca_key, x509.BasicConstraints(ca=True, path_length=None))
    names = x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    server = issue("localhost", server_key, ca_name, ca_key, names)
    paths = {"ca": folder / f"{name}ca.crt", "certificate": folder / f"{name}server.pem", "key": folder / f"{name}server.key"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["certificate"].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    key_format = serialization.PrivateFormat.PKCS8
    paths["key"].write_bytes(server_key.private_bytes(serialization.Encoding.PEM, key_format, serialization.NoEncryption()))
    return paths
