"""The files a config names (openadr.cert, key, ca_file; storage.path), as check-config and `run` find them: each
error names the config file and the key at fault, as a value's error at load does, and blames the key that is wrong.
Real config files through the real `edge-gateway` CLI."""
from __future__ import annotations

import subprocess

from cli_run import run_cli


def check_config(path) -> subprocess.CompletedProcess:
    return run_cli(["check-config", str(path)], timeout=60)


def _tls_config(tmp_path, **files) -> tuple:
    conf = tmp_path / "gw.toml"
    keys = "".join(f'{key} = "{path}"\n' for key, path in files.items())
    conf.write_text(f'[openadr]\nvtn_url = "https://vtn.example/OpenADR2/Simple/2.0b"\n{keys}'
                    f'[storage]\npath = "{tmp_path / "gw.sqlite"}"\n', encoding="utf-8")
    return conf


def test_a_key_file_that_is_not_a_key_is_blamed_not_a_passphrase_never_set(tmp_path):
    # "openadr.passphrase: does not decrypt openadr.key ...": the installer looked for a passphrase the config
    # never had, when the key file was empty (a secret mounted before it was written) or not a key
    (tmp_path / "empty.key").write_text("")
    (tmp_path / "notes.key").write_text("ask the utility for the key\n")
    for name, why in [("empty.key", "empty"), ("notes.key", "not a PEM private key")]:
        conf = _tls_config(tmp_path, cert=tmp_path, key=tmp_path / name)
        out = check_config(conf)
        assert out.returncode == 78, out
        assert f"configuration error: {conf}: openadr.key: {tmp_path / name}: {why}" in out.stderr.splitlines(), \
            out.stderr
        assert "passphrase" not in out.stderr, out.stderr


def test_a_ca_file_with_no_certificate_says_so_not_in_openssl_words(tmp_path):
    # "[X509: NO_CERTIFICATE_OR_CRL_FOUND] no certificate or crl found (_ssl.c:4154)"
    for text, reason in [("the utility's CA: see the e-mail\n", "NO_CERTIFICATE_OR_CRL_FOUND"),
                         ("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n", "PEM lib")]:
        (tmp_path / "ca.pem").write_text(text)
        conf = _tls_config(tmp_path, ca_file=tmp_path / "ca.pem")
        out = check_config(conf)
        assert out.returncode == 78, out
        # OpenSSL's reason kept in brackets, for whoever knows it
        assert out.stderr.startswith(f"configuration error: {conf}: openadr.ca_file: {tmp_path / 'ca.pem'}: holds "
                                     f"no certificate OpenSSL can read ("), out.stderr
        assert out.stderr.endswith("): it takes the VTN's CA certificate, or a bundle, in PEM (-----BEGIN "
                                   "CERTIFICATE-----)\n") and reason in out.stderr, out.stderr


def test_a_file_error_names_the_config_file_as_a_value_error_does(tmp_path):
    # "configuration error: storage.path: ..." named no config file, where a value's error names it: on a box with
    # several (a test instance beside the site's), which one holds the key
    (tmp_path / "data").mkdir()
    conf = tmp_path / "gw.toml"
    conf.write_text(f'[storage]\npath = "{tmp_path / "data"}"\n[openadr]\ncert = "{tmp_path / "ven.pem"}"\n'
                    f'key = "{tmp_path / "ven.key"}"\n', encoding="utf-8")
    out = check_config(conf)
    assert out.returncode == 78, out
    assert out.stderr.splitlines() == [
        f"configuration error: {conf}: openadr.cert: {tmp_path / 'ven.pem'}: No such file or directory",
        f"configuration error: {conf}: openadr.key: {tmp_path / 'ven.key'}: No such file or directory",
        f"configuration error: {conf}: storage.path: {tmp_path / 'data'} is a directory: name a file in it, e.g. "
        f"{tmp_path / 'data' / 'gateway.sqlite'}"]
