//! TLS to the journal database, with libpq's meaning of `sslmode` (SPEC §8).
//!
//! The journal URL's `sslmode` and `sslrootcert` are taken out of its query here (tokio-postgres
//! knows only `disable`, `prefer` and `require`, and refuses options it does not know), and turned
//! into the mode tokio-postgres negotiates with and a rustls connector that checks the server's
//! certificate as asked:
//!
//! | `sslmode` | TLS | the server's certificate |
//! |---|---|---|
//! | `disable` | never | — |
//! | `prefer` (the default) | when the server offers it, else plain | not checked |
//! | `require` | always | not checked |
//! | `verify-ca` | always | chain to `sslrootcert` |
//! | `verify-full` | always | chain to `sslrootcert`, and the host name |
//!
//! As in libpq, an `sslrootcert` given with `prefer` or `require` makes them check the chain too.
//! Without `sslrootcert`, `verify-*` trust the Mozilla roots built in (webpki-roots), the same on
//! every host; `sslrootcert=system` (libpq 16) means those too. Unlike libpq, a named
//! `sslrootcert` that cannot be read is an error in every mode that uses TLS, and `prefer` does
//! not retry without TLS after a failed handshake.
//!
//! Even where a certificate is not checked, the handshake's signatures are: the connection is
//! encrypted to whoever holds the certificate's key. That stops eavesdropping, not an active man
//! in the middle; only `verify-full` does.
//!
//! What this does not own: the rest of the URL (tokio-postgres parses it) and the connections.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::config::SslMode as DriverMode;
use tokio_postgres_rustls::MakeRustlsConnect;

/// The values `sslmode` takes, as the error lists them.
const MODES: &str = "disable, prefer, require, verify-ca or verify-full";

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// Where the certificates that a server's chain must end in come from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Roots {
    /// The Mozilla roots built in (`webpki-roots`).
    BuiltIn,
    /// The PEM file at `sslrootcert`.
    File(PathBuf),
}

/// What a journal URL asks of TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct TlsSettings {
    mode: SslMode,
    /// `sslrootcert`, if the URL names one.
    roots: Option<Roots>,
}

/// Splits `sslmode` and `sslrootcert` off `url`'s query: returns the URL without them, for
/// tokio-postgres to parse, and what they ask for. Errors never quote the URL (it holds a
/// password).
pub(super) fn take_params(url: &str) -> Result<(String, TlsSettings), String> {
    // Where tokio-postgres's URL parser sees the query start: the credentials run to the first
    // `@`, and the query starts at the first `?` after them.
    let after_credentials = url.find('@').map_or(0, |at| at + 1);
    let Some(question) = url[after_credentials..]
        .find('?')
        .map(|at| after_credentials + at)
    else {
        let settings = TlsSettings {
            mode: SslMode::Prefer,
            roots: None,
        };
        return Ok((url.to_owned(), settings));
    };
    let (mut mode, mut roots) = (None, None);
    let mut kept = Vec::new();
    for pair in url[question + 1..].split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match decode(key).as_slice() {
            b"sslmode" => mode = Some(parse_mode(value)?),
            b"sslrootcert" => {
                let path = decode(value);
                if path.is_empty() {
                    return Err("sslrootcert: expected the path of a PEM file".to_owned());
                }
                roots = Some(if path == b"system" {
                    Roots::BuiltIn
                } else {
                    Roots::File(PathBuf::from(OsString::from_vec(path)))
                });
            }
            _ => kept.push(pair),
        }
    }
    let mode = mode.unwrap_or(SslMode::Prefer);
    if roots == Some(Roots::BuiltIn) && mode != SslMode::VerifyFull && mode != SslMode::Disable {
        // Any publicly trusted certificate would do without its name checked (libpq's rule).
        return Err("sslrootcert=system needs sslmode=verify-full".to_owned());
    }
    let mut rest = url[..question].to_owned();
    if !kept.is_empty() {
        rest.push('?');
        rest.push_str(&kept.join("&"));
    }
    Ok((rest, TlsSettings { mode, roots }))
}

/// Percent-decodes a query key or value, as tokio-postgres does (a `%` without two hex digits
/// after it stays as it is).
fn decode(text: &str) -> Vec<u8> {
    percent_encoding::percent_decode_str(text).collect()
}

/// The value of `sslmode`; the error does not quote it (it could come from `${NAME}`).
fn parse_mode(value: &str) -> Result<SslMode, String> {
    match decode(value).as_slice() {
        b"disable" => Ok(SslMode::Disable),
        b"prefer" => Ok(SslMode::Prefer),
        b"require" => Ok(SslMode::Require),
        b"verify-ca" => Ok(SslMode::VerifyCa),
        b"verify-full" => Ok(SslMode::VerifyFull),
        b"allow" => Err(format!(
            "sslmode=allow (TLS only when the server insists) is not supported: use {MODES}"
        )),
        _ => Err(format!("sslmode: expected {MODES}")),
    }
}

impl TlsSettings {
    /// The mode tokio-postgres connects with: `verify-*` require TLS like `require` (the
    /// connector checks the rest).
    pub(super) fn driver_mode(&self) -> DriverMode {
        match self.mode {
            SslMode::Disable => DriverMode::Disable,
            SslMode::Prefer => DriverMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => DriverMode::Require,
        }
    }

    /// The connector that checks the server's certificate as `sslmode` asks. Reads
    /// `sslrootcert` now: an error names the file.
    pub(super) fn connector(&self) -> Result<MakeRustlsConnect, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = match (&self.roots, self.mode) {
            // Never used: tokio-postgres does not start TLS.
            (_, SslMode::Disable) => None,
            (None, SslMode::Prefer | SslMode::Require) => None,
            (None | Some(Roots::BuiltIn), _) => Some(RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            }),
            (Some(Roots::File(path)), _) => Some(read_roots(path)?),
        };
        let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|err| format!("cannot set up TLS: {err}"))?;
        let mut config = match (self.mode, roots) {
            (SslMode::VerifyFull, Some(roots)) => {
                builder.with_root_certificates(roots).with_no_client_auth()
            }
            (_, roots) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ChainOnly {
                    roots: roots.map(Arc::new),
                    provider,
                }))
                .with_no_client_auth(),
        };
        // What libpq 17 sends; PostgreSQL 17 needs it for `sslnegotiation=direct`, older servers
        // ignore it.
        config.alpn_protocols = vec![b"postgresql".to_vec()];
        Ok(MakeRustlsConnect::new(config))
    }
}

/// The certificates in the PEM file `path` (one or several), as trust anchors.
fn read_roots(path: &Path) -> Result<RootCertStore, String> {
    let named = |what: String| format!("sslrootcert `{}`: {what}", path.display());
    let pem = std::fs::read(path).map_err(|err| named(format!("cannot read it: {err}")))?;
    let mut roots = RootCertStore::empty();
    for (index, cert) in CertificateDer::pem_slice_iter(&pem).enumerate() {
        let cert = cert.map_err(|err| named(format!("not a PEM certificate file: {err}")))?;
        roots
            .add(cert)
            .map_err(|err| named(format!("certificate {} is not usable: {err}", index + 1)))?;
    }
    if roots.is_empty() {
        return Err(named("holds no PEM certificate".to_owned()));
    }
    Ok(roots)
}

/// Checks a server's certificate short of its name: its chain to `roots` (`verify-ca`, or
/// `prefer`/`require` with `sslrootcert`), or nothing at all (`roots: None`: `prefer` and
/// `require`). The handshake's signatures are checked either way.
#[derive(Debug)]
struct ChainOnly {
    roots: Option<Arc<RootCertStore>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            let cert = ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_cert_signed_by_trust_anchor(
                &cert,
                roots,
                intermediates,
                now,
                self.provider.signature_verification_algorithms.all,
            )?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            signature,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            signature,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use std::net::ToSocketAddrs;

    use super::super::{parse_url, probe};
    use super::*;

    /// Debian's self-signed certificate, which the test server presents (`ssl = on`).
    const SNAKEOIL: &str = "/etc/ssl/certs/ssl-cert-snakeoil.pem";
    /// A CA that signed nothing the test server has (made once with `openssl req -x509`,
    /// P-256, valid until 2126).
    const FOREIGN_CA: &str = "-----BEGIN CERTIFICATE-----
MIIBxDCCAWmgAwIBAgIUO/kjwuBdc3XOCqe3ALnPxhISsW0wCgYIKoZIzj0EAwIw
LjEsMCoGA1UEAwwjY21xaG9vayB0ZXN0IENBIHRoYXQgc2lnbmVkIG5vdGhpbmcw
IBcNMjYxMTI4MDM0MzQwWhgPMjEyNjExMDQwMzQzNDBaMC4xLDAqBgNVBAMMI2Nt
cWhvb2sgdGVzdCBDQSB0aGF0IHNpZ25lZCBub3RoaW5nMFkwEwYHKoZIzj0CAQYI
KoZIzj0DAQcDQgAESM5ITjyVYXIHLLOGa7/KnW28VWbJislzSjhM/0lPNxYRguDq
adhzWY+ePXK1ppwjoo7lpkCv0n1Z2Bc+tQ5BM6NjMGEwHQYDVR0OBBYEFCo/7p2h
3rA8mKh2/95w/gUda2dnMB8GA1UdIwQYMBaAFCo/7p2h3rA8mKh2/95w/gUda2dn
MA8GA1UdEwEB/wQFMAMBAf8wDgYDVR0PAQH/BAQDAgEGMAoGCCqGSM49BAMCA0kA
MEYCIQC8+GHBwlLdO4ShZ68A0fY0wXzyWEZZobuvyX0Zrb/vUwIhAOuIvsAjETV8
rc9AmgJ+bXtbDhL+pe79+x3ZaqYr+cIA
-----END CERTIFICATE-----
";
    const PASSWORD: &str = "hunter2-not-to-be-seen";

    fn settings(url: &str) -> TlsSettings {
        take_params(url).expect("a valid URL").1
    }

    fn error_of(url: &str) -> String {
        match parse_url(url) {
            Ok(_) => panic!("expected an error"),
            Err(err) => {
                assert!(!err.contains(PASSWORD), "the password leaked: {err}");
                err
            }
        }
    }

    #[test]
    fn sslmode_and_sslrootcert_are_taken_out_of_the_query_and_the_rest_kept() {
        let (rest, tls) = take_params(&format!(
            "postgres://u:{PASSWORD}@db:5432/x?application_name=a&sslmode=verify-ca\
             &sslrootcert=/etc/ca%20bundle.pem&connect_timeout=3"
        ))
        .expect("valid");
        assert_eq!(
            rest,
            format!("postgres://u:{PASSWORD}@db:5432/x?application_name=a&connect_timeout=3")
        );
        assert_eq!(tls.mode, SslMode::VerifyCa);
        assert_eq!(
            tls.roots,
            Some(Roots::File(PathBuf::from("/etc/ca bundle.pem")))
        );
        let (rest, _) = take_params("postgresql://db/x?sslmode=require").expect("valid");
        assert_eq!(rest, "postgresql://db/x");
    }

    #[test]
    fn the_query_is_found_where_tokio_postgres_finds_it() {
        // A `?` in the password is part of the credentials; keys may be percent-encoded.
        let (rest, tls) = take_params("postgres://u:p?w@db/x?ssl%6Dode=require").expect("valid");
        assert_eq!(rest, "postgres://u:p?w@db/x");
        assert_eq!(tls.mode, SslMode::Require);
        let (config, _) = parse_url("postgres://u:p?w@db/x?ssl%6Dode=require").expect("valid");
        assert_eq!(config.get_password(), Some(&b"p?w"[..]));
    }

    #[test]
    fn every_sslmode_negotiates_as_libpq_means_it() {
        for (mode, negotiation) in [
            ("disable", DriverMode::Disable),
            ("prefer", DriverMode::Prefer),
            ("require", DriverMode::Require),
            ("verify-ca", DriverMode::Require),
            ("verify-full", DriverMode::Require),
        ] {
            let (config, _) =
                parse_url(&format!("postgres://db/x?sslmode={mode}")).expect("a valid mode");
            assert_eq!(config.get_ssl_mode(), negotiation, "sslmode={mode}");
        }
    }

    #[test]
    fn without_sslmode_tls_is_preferred_and_not_verified() {
        let tls = settings("postgres://u@db/x");
        assert_eq!(tls.mode, SslMode::Prefer);
        assert_eq!(tls.roots, None);
        let (config, _) = parse_url("postgres://u@db/x?application_name=z").expect("valid");
        assert_eq!(config.get_ssl_mode(), DriverMode::Prefer);
        assert_eq!(config.get_application_name(), Some("z"));
    }

    #[test]
    fn a_bad_sslmode_is_an_error_without_the_password_or_the_value() {
        let err = error_of(&format!(
            "postgres://u:{PASSWORD}@db/x?sslmode=verify-everything"
        ));
        assert!(err.contains("sslmode"), "{err}");
        assert!(err.contains("verify-full"), "lists the modes: {err}");
        assert!(!err.contains("verify-everything"), "{err}");
        let err = error_of(&format!("postgres://u:{PASSWORD}@db/x?sslmode=allow"));
        assert!(
            err.contains("sslmode=allow") && err.contains("not supported"),
            "{err}"
        );
    }

    #[test]
    fn other_options_tokio_postgres_does_not_know_are_still_refused() {
        let err = error_of(&format!(
            "postgres://u:{PASSWORD}@db/x?sslmode=require&sslcert=/c.pem"
        ));
        assert!(err.contains("sslcert"), "{err}");
    }

    #[test]
    fn a_missing_sslrootcert_is_an_error_naming_the_file() {
        for mode in ["prefer", "require", "verify-ca", "verify-full"] {
            let err = error_of(&format!(
                "postgres://u:{PASSWORD}@db/x?sslmode={mode}&sslrootcert=/nonexistent/ca.pem"
            ));
            assert!(
                err.contains("sslrootcert `/nonexistent/ca.pem`: cannot read it"),
                "{err}"
            );
        }
        let err = error_of(&format!("postgres://u:{PASSWORD}@db/x?sslrootcert="));
        assert!(err.contains("sslrootcert"), "{err}");
    }

    #[test]
    fn an_sslrootcert_without_a_certificate_is_an_error() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").expect("written");
        let err = error_of(&format!(
            "postgres://u:{PASSWORD}@db/x?sslmode=verify-full&sslrootcert={}",
            empty.display()
        ));
        assert!(
            err.contains("empty.pem") && err.contains("no PEM certificate"),
            "{err}"
        );
    }

    #[test]
    fn sslrootcert_is_not_read_when_tls_is_disabled() {
        parse_url("postgres://db/x?sslmode=disable&sslrootcert=/nonexistent/ca.pem")
            .expect("not read");
    }

    #[test]
    fn sslrootcert_system_means_the_built_in_roots_and_needs_verify_full() {
        let tls = settings("postgres://db/x?sslmode=verify-full&sslrootcert=system");
        assert_eq!(tls.roots, Some(Roots::BuiltIn));
        parse_url("postgres://db/x?sslmode=verify-full&sslrootcert=system").expect("valid");
        let err = error_of("postgres://db/x?sslmode=require&sslrootcert=system");
        assert!(err.contains("verify-full"), "{err}");
    }

    /// The test server from `CMQHOOK_TEST_POSTGRES`, or `None` (and a note) without it.
    fn test_server() -> Option<tokio_postgres::Config> {
        match std::env::var("CMQHOOK_TEST_POSTGRES") {
            Ok(url) if !url.is_empty() => Some(url.parse().expect("a PostgreSQL URL")),
            _ => {
                eprintln!("skipped: CMQHOOK_TEST_POSTGRES is not set (PostgreSQL tests)");
                None
            }
        }
    }

    /// A URL for the test server that names it `name` (what TLS checks) while connecting to
    /// its address, with `params` added.
    fn url_naming(server: &tokio_postgres::Config, name: &str, params: &str) -> String {
        let host = match server.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
            _ => "127.0.0.1".to_owned(),
        };
        let port = server.get_ports().first().copied().unwrap_or(5432);
        let address = (host.as_str(), port)
            .to_socket_addrs()
            .expect("the test server's host resolves")
            .next()
            .expect("an address")
            .ip();
        let encode = |bytes: &[u8]| {
            percent_encoding::percent_encode(bytes, percent_encoding::NON_ALPHANUMERIC).to_string()
        };
        let credentials = match server.get_password() {
            Some(password) => format!(
                "{}:{}",
                encode(server.get_user().unwrap_or("postgres").as_bytes()),
                encode(password)
            ),
            None => encode(server.get_user().unwrap_or("postgres").as_bytes()),
        };
        let database = encode(server.get_dbname().unwrap_or("postgres").as_bytes());
        format!("postgres://{credentials}@{name}:{port}/{database}?hostaddr={address}&{params}")
    }

    /// Whether the server sees this connection, made with `url`'s connector, as TLS.
    fn server_sees_tls(url: &str) -> Result<bool, String> {
        let (config, tls) = parse_url(url)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(async move {
            let (client, connection) = config.connect(tls).await.map_err(|e| e.to_string())?;
            tokio::spawn(connection);
            let row = client
                .query_one(
                    "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                    &[],
                )
                .await
                .map_err(|e| e.to_string())?;
            Ok(row.get(0))
        })
    }

    /// The DNS name the server's certificate is for.
    fn snakeoil_name() -> String {
        use x509_cert::der::DecodePem;
        use x509_cert::ext::pkix::SubjectAltName;
        use x509_cert::ext::pkix::name::GeneralName;
        let pem = std::fs::read(SNAKEOIL).expect("the snakeoil certificate");
        let cert = x509_cert::Certificate::from_pem(&pem).expect("a PEM certificate");
        let (_, names) = cert
            .tbs_certificate
            .get::<SubjectAltName>()
            .expect("a readable extension")
            .expect("a subjectAltName");
        names
            .0
            .iter()
            .find_map(|name| match name {
                GeneralName::DnsName(name) => Some(name.to_string()),
                _ => None,
            })
            .expect("a DNS name")
    }

    #[test]
    fn require_encrypts_without_verifying_and_disable_does_not() {
        let Some(server) = test_server() else { return };
        let require = url_naming(&server, "127.0.0.1", "sslmode=require");
        probe(&require).expect("probe with sslmode=require");
        assert_eq!(server_sees_tls(&require), Ok(true));
        let prefer = url_naming(&server, "127.0.0.1", "sslmode=prefer");
        assert_eq!(server_sees_tls(&prefer), Ok(true));
        let disable = url_naming(&server, "127.0.0.1", "sslmode=disable");
        probe(&disable).expect("probe with sslmode=disable");
        assert_eq!(server_sees_tls(&disable), Ok(false));
    }

    #[test]
    fn verify_ca_checks_the_chain_and_not_the_name() {
        let Some(server) = test_server() else { return };
        let url = url_naming(
            &server,
            "127.0.0.1",
            &format!("sslmode=verify-ca&sslrootcert={SNAKEOIL}"),
        );
        assert_eq!(server_sees_tls(&url), Ok(true));
        probe(&url).expect("probe with verify-ca");
        // libpq's rule: require with sslrootcert checks the chain too.
        let dir = tempfile::tempdir().expect("a temp dir");
        let foreign = dir.path().join("foreign.pem");
        std::fs::write(&foreign, FOREIGN_CA).expect("written");
        for mode in ["verify-ca", "require"] {
            let url = url_naming(
                &server,
                "127.0.0.1",
                &format!("sslmode={mode}&sslrootcert={}", foreign.display()),
            );
            let err = probe(&url).expect_err("a CA that did not sign the server's certificate");
            assert!(err.contains("UnknownIssuer"), "sslmode={mode}: {err}");
        }
    }

    #[test]
    fn sslrootcert_may_hold_several_certificates() {
        let Some(server) = test_server() else { return };
        let dir = tempfile::tempdir().expect("a temp dir");
        let bundle = dir.path().join("bundle.pem");
        let snakeoil = std::fs::read_to_string(SNAKEOIL).expect("the snakeoil certificate");
        std::fs::write(&bundle, format!("{FOREIGN_CA}{snakeoil}")).expect("written");
        let url = url_naming(
            &server,
            "127.0.0.1",
            &format!("sslmode=verify-ca&sslrootcert={}", bundle.display()),
        );
        assert_eq!(server_sees_tls(&url), Ok(true));
    }

    #[test]
    fn verify_full_checks_the_host_name_too() {
        let Some(server) = test_server() else { return };
        let root = format!("sslrootcert={SNAKEOIL}");
        let by_address = url_naming(&server, "127.0.0.1", &format!("sslmode=verify-full&{root}"));
        let err = probe(&by_address).expect_err("the certificate is not for 127.0.0.1");
        assert!(err.contains("certificate not valid for name"), "{err}");
        let by_name = url_naming(
            &server,
            &snakeoil_name(),
            &format!("sslmode=verify-full&{root}"),
        );
        assert_eq!(server_sees_tls(&by_name), Ok(true));
    }

    #[test]
    fn verify_full_refuses_a_certificate_its_ca_did_not_sign() {
        let Some(server) = test_server() else { return };
        let dir = tempfile::tempdir().expect("a temp dir");
        let foreign = dir.path().join("foreign.pem");
        std::fs::write(&foreign, FOREIGN_CA).expect("written");
        let name = snakeoil_name();
        let url = url_naming(
            &server,
            &name,
            &format!("sslmode=verify-full&sslrootcert={}", foreign.display()),
        );
        let err = probe(&url).expect_err("a CA that did not sign the server's certificate");
        assert!(
            err.contains("TLS handshake") && err.contains("UnknownIssuer"),
            "{err}"
        );
        // Without sslrootcert, the built-in roots: none of them signed a snakeoil either.
        let url = url_naming(&server, &name, "sslmode=verify-full");
        let err = probe(&url).expect_err("not signed by a public CA");
        assert!(err.contains("UnknownIssuer"), "{err}");
    }
}
