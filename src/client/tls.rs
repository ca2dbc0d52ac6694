//! TLS on the client side, for both tools (`tcp-client` and `tcp-load`): the four flags, the
//! rustls [`ClientConfig`] they describe, and the name the server's certificate must carry.
//!
//! ```text
//! --tls                speak TLS to the server; needs one of:
//!   --ca FILE          trust the certificates in FILE (PEM, one or more)
//!   --insecure         trust any certificate (the session is still encrypted and the
//!                      handshake signatures still checked, but anyone can pose as the server)
//! --server-name NAME   the name to verify and to send as SNI
//!                      [default: the host part of --addr; an IP address is matched
//!                      against the certificate's IP addresses]
//! ```
//!
//! # Choices
//!
//! - rustls with the ring provider only, passed explicitly to the config (no process-wide
//!   default is installed), and its safe defaults: TLS 1.3 and 1.2, the provider's cipher
//!   suites and key exchanges.
//! - Session resumption is off: every connection makes a full handshake. tcp-load times the
//!   handshakes, and a mix of full and resumed ones would make those figures depend on how
//!   many tickets happened to be stored when each connection started.
//! - `--insecure` replaces only the certificate check (`AnyCertificate`): the signatures
//!   that prove the server holds the certificate's key are verified with the provider's own
//!   functions, so the handshake is a real one, against whoever answers.
//!
//! # What it refuses to do
//!
//! No system trust store and no client certificates: the server is a test server whose
//! certificate is passed with `--ca`. A combination of flags that cannot mean anything
//! (`--tls` alone, `--ca` without `--tls`, `--ca` with `--insecure`) is a usage error, found
//! by [`TlsArgs::check`] before anything connects.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Args;
use rustls::client::Resumption;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{WebPkiSupportedAlgorithms, ring};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

/// The one-line warning printed on stderr when `--insecure` is given.
pub const INSECURE_WARNING: &str = "warning: --insecure: the server's certificate is not \
                                    verified; anyone on the path can pose as the server";

/// The TLS flags, the same in both tools. `global` so that `tcp-client frame` takes them
/// before or after the frame's subcommand, as it does `--addr`.
#[derive(Args, Debug, Clone, Default, PartialEq, Eq)]
#[command(next_help_heading = "TLS")]
pub struct TlsArgs {
    /// Speak TLS to the server; needs --ca FILE or --insecure.
    #[arg(long, global = true)]
    pub tls: bool,

    /// Trust the certificates in FILE (PEM; it may hold several): the server's certificate
    /// must be one of them or be issued by one.
    #[arg(long, value_name = "FILE", global = true)]
    pub ca: Option<PathBuf>,

    /// Accept any server certificate (still a real TLS session, but anyone can pose as the
    /// server); prints a warning.
    #[arg(long, global = true)]
    pub insecure: bool,

    /// The name the server's certificate must carry, also sent as SNI [default: the host
    /// part of --addr; an IP address must be one of the certificate's IP addresses].
    #[arg(long, value_name = "NAME", global = true)]
    pub server_name: Option<String>,
}

impl TlsArgs {
    /// The combinations clap cannot express, and the server name's syntax. `addr` is the
    /// `--addr` text, whose host part is the default server name.
    ///
    /// # Errors
    ///
    /// A message for a usage error (the tools exit 2 with it).
    pub fn check(&self, addr: &str) -> Result<(), String> {
        if !self.tls {
            let stray = [
                (self.ca.is_some(), "--ca"),
                (self.insecure, "--insecure"),
                (self.server_name.is_some(), "--server-name"),
            ]
            .into_iter()
            .find_map(|(given, flag)| given.then_some(flag));
            return match stray {
                Some(flag) => Err(format!("{flag} only applies with --tls")),
                None => Ok(()),
            };
        }
        match (&self.ca, self.insecure) {
            (None, false) => {
                return Err("--tls needs to know whom to trust: pass --ca FILE (the \
                            certificates to trust) or --insecure (any certificate)"
                    .to_string());
            }
            (Some(_), true) => {
                return Err("--ca and --insecure cannot be used together: --insecure \
                            trusts any certificate"
                    .to_string());
            }
            _ => {}
        }
        self.server_name(addr).map(|_| ())
    }

    /// The name to verify and send as SNI: `--server-name`, or the host part of `addr`.
    ///
    /// # Errors
    ///
    /// The name is neither a DNS name nor an IP address.
    pub fn server_name(&self, addr: &str) -> Result<ServerName<'static>, String> {
        let (name, from) = match &self.server_name {
            Some(name) => (name.as_str(), "--server-name"),
            None => (host_of(addr), "the host part of --addr"),
        };
        ServerName::try_from(name.to_string())
            .map_err(|_| format!("{from} `{name}` is neither a DNS name nor an IP address"))
    }

    /// The TLS settings these flags describe; `None` without `--tls`. Reads the `--ca` file.
    ///
    /// # Errors
    ///
    /// The CA file cannot be read or holds no usable certificate; the server name is invalid
    /// (which [`TlsArgs::check`] reports first).
    pub fn config(&self, addr: &str) -> Result<Option<TlsConfig>, TlsError> {
        if !self.tls {
            return Ok(None);
        }
        let server_name = self.server_name(addr).map_err(TlsError::ServerName)?;
        let provider = Arc::new(ring::default_provider());
        let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?;
        let mut config = match &self.ca {
            Some(path) => builder
                .with_root_certificates(read_roots(path)?)
                .with_no_client_auth(),
            None => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate {
                    algorithms: provider.signature_verification_algorithms,
                }))
                .with_no_client_auth(),
        };
        config.resumption = Resumption::disabled();
        Ok(Some(TlsConfig {
            config: Arc::new(config),
            server_name,
        }))
    }
}

/// The host part of `HOST:PORT` (`[::1]:8443` gives `::1`); the whole text if it has no port.
#[must_use]
pub fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _port)| host);
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

/// Everything a new TLS client session needs: shared by every connection of a run.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub config: Arc<ClientConfig>,
    pub server_name: ServerName<'static>,
}

impl TlsConfig {
    /// A new client session, its ClientHello ready to be written.
    ///
    /// # Errors
    ///
    /// What rustls refuses at the start of a session (nothing the flags can cause).
    pub fn session(&self) -> Result<ClientConnection, rustls::Error> {
        ClientConnection::new(Arc::clone(&self.config), self.server_name.clone())
    }
}

/// Why the TLS settings could not be made. `Display` names the file at fault.
#[derive(Debug)]
pub enum TlsError {
    /// The `--ca` file could not be opened or read.
    CaRead { path: PathBuf, source: io::Error },
    /// The `--ca` file is not valid PEM.
    CaPem { path: PathBuf, source: pem::Error },
    /// The `--ca` file holds no `CERTIFICATE` section.
    CaEmpty { path: PathBuf },
    /// A certificate in the `--ca` file cannot be a trust anchor (1-based `index`).
    CaCertificate {
        path: PathBuf,
        index: usize,
        source: rustls::Error,
    },
    /// The server name is neither a DNS name nor an IP address.
    ServerName(String),
    /// rustls refused the configuration.
    Config(rustls::Error),
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::CaRead { path, source } => {
                write!(f, "cannot read the CA file {}: {source}", path.display())
            }
            TlsError::CaPem { path, source } => {
                write!(
                    f,
                    "the CA file {} is not valid PEM: {source}",
                    path.display()
                )
            }
            TlsError::CaEmpty { path } => write!(
                f,
                "the CA file {} holds no certificate (no PEM CERTIFICATE section)",
                path.display()
            ),
            TlsError::CaCertificate {
                path,
                index,
                source,
            } => write!(
                f,
                "certificate {index} in the CA file {} cannot be trusted: {source}",
                path.display()
            ),
            TlsError::ServerName(message) => f.write_str(message),
            TlsError::Config(e) => write!(f, "TLS configuration: {e}"),
        }
    }
}

impl std::error::Error for TlsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TlsError::CaRead { source, .. } => Some(source),
            TlsError::CaPem { source, .. } => Some(source),
            TlsError::CaCertificate { source, .. } | TlsError::Config(source) => Some(source),
            TlsError::CaEmpty { .. } | TlsError::ServerName(_) => None,
        }
    }
}

/// Every certificate of the PEM file at `path`, as trust anchors.
fn read_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let pem_error = |source| match source {
        pem::Error::Io(source) => TlsError::CaRead {
            path: path.to_path_buf(),
            source,
        },
        source => TlsError::CaPem {
            path: path.to_path_buf(),
            source,
        },
    };
    let mut roots = RootCertStore::empty();
    for (n, cert) in CertificateDer::pem_file_iter(path)
        .map_err(pem_error)?
        .enumerate()
    {
        roots
            .add(cert.map_err(pem_error)?)
            .map_err(|source| TlsError::CaCertificate {
                path: path.to_path_buf(),
                index: n + 1,
                source,
            })?;
    }
    if roots.is_empty() {
        return Err(TlsError::CaEmpty {
            path: path.to_path_buf(),
        });
    }
    Ok(roots)
}

/// `--insecure`: any certificate, any name, any date is accepted, but the handshake
/// signatures are checked as usual, so the peer must hold the key of the certificate it
/// shows.
#[derive(Debug)]
struct AnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The rustls error inside an IO error from `complete_io` or a `Stream` (which wrap it as
/// `InvalidData`), if that is what it is.
#[must_use]
pub fn rustls_error(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref()?.downcast_ref::<rustls::Error>()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(tls: bool, ca: Option<&str>, insecure: bool, name: Option<&str>) -> TlsArgs {
        TlsArgs {
            tls,
            ca: ca.map(PathBuf::from),
            insecure,
            server_name: name.map(str::to_string),
        }
    }

    #[test]
    fn flag_combinations() {
        let ok = [
            args(false, None, false, None),
            args(true, Some("ca.pem"), false, None),
            args(true, None, true, None),
            args(true, None, true, Some("example.com")),
            args(true, Some("ca.pem"), false, Some("10.0.0.1")),
        ];
        for a in ok {
            assert_eq!(a.check("127.0.0.1:8443"), Ok(()), "{a:?}");
        }
        let bad: &[(TlsArgs, &str)] = &[
            (args(true, None, false, None), "pass --ca FILE"),
            (
                args(true, Some("ca.pem"), true, None),
                "cannot be used together",
            ),
            (
                args(false, Some("ca.pem"), false, None),
                "--ca only applies with --tls",
            ),
            (
                args(false, None, true, None),
                "--insecure only applies with --tls",
            ),
            (
                args(false, None, false, Some("x")),
                "--server-name only applies with --tls",
            ),
            (
                args(true, None, true, Some("no spaces")),
                "neither a DNS name",
            ),
        ];
        for (a, needle) in bad {
            let message = a.check("127.0.0.1:8443").expect_err(needle);
            assert!(message.contains(needle), "{a:?}: {message}");
        }
    }

    #[test]
    fn the_default_server_name_is_the_host_part() {
        let cases = [
            ("localhost:8443", "localhost"),
            ("127.0.0.1:8443", "127.0.0.1"),
            ("[::1]:8443", "::1"),
            ("example.com", "example.com"),
        ];
        for (addr, host) in cases {
            assert_eq!(host_of(addr), host, "{addr}");
        }
        let insecure = args(true, None, true, None);
        assert!(matches!(
            insecure.server_name("127.0.0.1:1"),
            Ok(ServerName::IpAddress(_))
        ));
        assert!(matches!(
            insecure.server_name("[::1]:1"),
            Ok(ServerName::IpAddress(_))
        ));
        assert!(matches!(
            insecure.server_name("localhost:1"),
            Ok(ServerName::DnsName(_))
        ));
        let named = args(true, None, true, Some("server.test"));
        assert_eq!(
            named.server_name("127.0.0.1:1"),
            Ok(ServerName::try_from("server.test").unwrap())
        );
    }

    #[test]
    fn bad_ca_files_are_named_in_the_error() {
        let dir = std::env::temp_dir().join(format!("tcp-reactor-ca-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.pem");
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "no certificate here\n").unwrap();
        let garbage = dir.join("garbage.pem");
        std::fs::write(
            &garbage,
            "-----BEGIN CERTIFICATE-----\n%%%%\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let not_a_cert = dir.join("not-a-cert.pem");
        std::fs::write(
            &not_a_cert,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let cases = [
            (&missing, "cannot read the CA file"),
            (&empty, "holds no certificate"),
            (&garbage, "is not valid PEM"),
            (&not_a_cert, "certificate 1 in the CA file"),
        ];
        for (path, needle) in cases {
            let a = TlsArgs {
                ca: Some(path.clone()),
                ..args(true, None, false, None)
            };
            let message = a.config("127.0.0.1:1").expect_err(needle).to_string();
            assert!(message.contains(needle), "{message}");
            assert!(
                message.contains(&path.display().to_string()),
                "{message} does not name the file"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn no_config_without_tls() {
        assert!(
            args(false, None, false, None)
                .config("127.0.0.1:1")
                .unwrap()
                .is_none()
        );
        let insecure = args(true, None, true, None).config("127.0.0.1:1").unwrap();
        assert!(insecure.is_some_and(|c| c.session().is_ok()));
    }
}
