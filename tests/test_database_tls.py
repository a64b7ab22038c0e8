"""TLS to PostgreSQL: a server started by the test (initdb into a temporary directory) with a
certificate from a CA the test makes with openssl. The worker's pool connects with
`sslmode=verify-full` and the CA as `sslrootcert`, and refuses a server whose certificate does
not name the host it was asked for, or that a foreign CA signed."""

from __future__ import annotations

import glob
import os
import shutil
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from tests.helpers import unused_port
from tools.terraform_hcl import load_hcl
from worker.db_pool import open_pool
from worker.settings import Settings

pytestmark = pytest.mark.slow  # its own PostgreSQL server (initdb) and a CA

INITDB = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))


@dataclass
class TlsServer:
    port: int
    ca: Path
    foreign_ca: Path


def _openssl(*args: str | Path, cwd: Path) -> None:
    subprocess.run(["openssl", *map(str, args)], cwd=cwd, check=True, capture_output=True)


def _make_ca(folder: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
             "-keyout", f"{name}.key", "-out", f"{name}.crt", cwd=folder)  # fmt: skip


def _make_certificates(folder: Path) -> None:
    """A CA, a server certificate for DNS name `localhost` only (not 127.0.0.1), and a foreign
    CA that signed nothing here."""
    _make_ca(folder, "ca")
    _make_ca(folder, "foreign")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
             "-keyout", "server.key", "-out", "server.csr", cwd=folder)  # fmt: skip
    (folder / "san.ext").write_text("subjectAltName=DNS:localhost\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", "server.crt",
             cwd=folder)  # fmt: skip


@pytest.fixture(scope="module")
def tls_server() -> Iterator[TlsServer]:
    if not INITDB or shutil.which("openssl") is None:
        pytest.skip("needs PostgreSQL's initdb (/usr/lib/postgresql/*/bin) and openssl")
    bin_dir = Path(INITDB[-1]).parent
    # initdb and postgres refuse to run as root: as root, run them as the postgres user.
    as_owner = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    folder = Path(tempfile.mkdtemp(prefix="iw-pg-tls-"))
    _make_certificates(folder)
    data = folder / "data"
    if as_owner:
        shutil.chown(folder, "postgres")
        for name in ("server.key", "server.crt"):
            shutil.chown(folder / name, "postgres")
    (folder / "server.key").chmod(0o600)
    subprocess.run([*as_owner, bin_dir / "initdb", "-D", data, "-U", "postgres", "--auth=trust"],
                   check=True, capture_output=True)  # fmt: skip
    port = unused_port()
    server = subprocess.Popen(
        [*as_owner, bin_dir / "postgres", "-D", data, "-p", str(port),
         "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={folder}",
         "-c", "ssl=on", "-c", f"ssl_cert_file={folder / 'server.crt'}",
         "-c", f"ssl_key_file={folder / 'server.key'}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while subprocess.run([bin_dir / "pg_isready", "-h", "127.0.0.1", "-p", str(port)],
                             capture_output=True, check=False).returncode != 0:  # fmt: skip
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError("the TLS PostgreSQL did not start")
            time.sleep(0.2)
        yield TlsServer(port, folder / "ca.crt", folder / "foreign.crt")
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(folder, ignore_errors=True)


def _settings(url: str) -> Settings:
    return Settings.from_env({"DATABASE_URL": url, "SQS_QUEUE_URL": "http://127.0.0.1:1/q"})


async def test_the_worker_pool_connects_with_verify_full(tls_server: TlsServer) -> None:
    url = (
        f"postgresql://postgres@localhost:{tls_server.port}/postgres"
        f"?sslmode=verify-full&sslrootcert={tls_server.ca}"
    )
    pool = await open_pool(_settings(url))
    try:
        encrypted = await pool.fetchval("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
    finally:
        await pool.close()
    assert encrypted is True


@pytest.mark.parametrize(
    ("host", "ca"),
    [("127.0.0.1", "ca"), ("localhost", "foreign_ca")],
    ids=["host name not in the certificate", "certificate from another CA"],
)
async def test_verify_full_refuses_a_server_it_cannot_verify(
    tls_server: TlsServer, host: str, ca: str
) -> None:
    url = (
        f"postgresql://postgres@{host}:{tls_server.port}/postgres"
        f"?sslmode=verify-full&sslrootcert={getattr(tls_server, ca)}"
    )
    with pytest.raises(ssl.SSLCertVerificationError):
        await open_pool(_settings(url))


async def test_without_verification_the_same_server_is_accepted(tls_server: TlsServer) -> None:
    """The refusals above come from the checks: `require` (no certificate check) connects."""
    connection = await asyncpg.connect(
        f"postgresql://postgres@127.0.0.1:{tls_server.port}/postgres?sslmode=require"
    )
    await connection.close()


def _rds_json_tls() -> str:
    """The TLS query the Terraform module puts on rds_json DATABASE_URLs."""
    (locals_,) = load_hcl(Path(__file__).resolve().parents[1] / "terraform" / "secrets.tf")[
        "locals"
    ]
    assert "?${local.database_tls_query}" in locals_["database_environment"]
    variables = load_hcl(Path(__file__).resolve().parents[1] / "terraform" / "variables.tf")
    defaults = {
        name: body["default"]
        for block in variables["variable"]
        for name, body in block.items()
        if name in ("database_sslmode", "database_ca_bundle_path")
    }
    return (
        str(locals_["database_tls_query"])
        .replace("${var.database_sslmode}", defaults["database_sslmode"])
        .replace("${var.database_ca_bundle_path}", defaults["database_ca_bundle_path"])
    )


async def test_the_rds_json_url_verifies_the_server(
    tls_server: TlsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    tls = _rds_json_tls()
    assert "sslmode=verify-full" in tls
    bundle = tls.split("sslrootcert=")[1]
    assert bundle == "/etc/ssl/certs/rds-global-bundle.pem"
    # The URL as rendered with database_host = null: everything else from the PG* variables.
    monkeypatch.setenv("PGHOST", "localhost")
    monkeypatch.setenv("PGPORT", str(tls_server.port))
    monkeypatch.setenv("PGUSER", "postgres")
    monkeypatch.setenv("PGDATABASE", "postgres")
    url = "postgresql://?" + tls.replace(bundle, str(tls_server.ca))
    pool = await open_pool(_settings(url))
    try:
        assert await pool.fetchval("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
    finally:
        await pool.close()
    monkeypatch.setenv("PGHOST", "127.0.0.1")  # not the name in the certificate
    with pytest.raises(ssl.SSLCertVerificationError):
        await open_pool(_settings(url))
