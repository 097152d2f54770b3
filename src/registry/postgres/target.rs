//! Where the PostgreSQL registry is and how to reach it: `registry.url` parsed as libpq reads
//! it (`sslmode`, `sslrootcert`), the TLS it asks for, and the URL shown without its password.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::config::RegistryConfig;
pub use crate::config::registry::shown;
use crate::config::registry::{PostgresUrl, SslMode};
use crate::secret::Secret;

/// How to reach the database and how this daemon names itself there.
#[derive(Clone)]
pub struct PostgresTarget {
    /// Parsed from `registry.url`, with the password from `password_file` if given.
    pub config: tokio_postgres::Config,
    /// The URL without its password, for messages.
    pub shown: String,
    /// `registry.host_name`: written into leases, history and the audit.
    pub host: String,
    /// TLS for `sslmode=prefer|require` (certificates checked against the system's roots).
    pub tls: tokio_postgres_rustls::MakeRustlsConnect,
}

impl std::fmt::Debug for PostgresTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresTarget")
            .field("url", &self.shown)
            .field("host", &self.host)
            .finish()
    }
}

/// What can be wrong with `registry.url`.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// Not a URL tokio-postgres understands.
    #[error(
        "registry.url is not a PostgreSQL connection URL ({0}); expected postgres://USER@HOST:PORT/DATABASE"
    )]
    Url(String),
    /// TLS could not be set up.
    #[error("cannot set up TLS for the PostgreSQL registry: {0}")]
    Tls(String),
}

impl PostgresTarget {
    /// Parses `url`; `password` (from `registry.password_file` or the credential) replaces
    /// any password in it. `sslmode` and `sslrootcert` mean what they mean to libpq (see
    /// [`Tls`]).
    pub fn new(url: &str, password: Option<&Secret>, host: &str) -> Result<Self, TargetError> {
        let parsed = PostgresUrl::parse(url).map_err(TargetError::Url)?;
        let tls = Tls {
            mode: match parsed.ssl_mode {
                SslMode::Disable => tokio_postgres::config::SslMode::Disable,
                SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
                SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                    tokio_postgres::config::SslMode::Require
                }
            },
            verify: parsed.ssl_mode.verifies(),
            root_cert: parsed.root_cert,
        };
        let mut config: tokio_postgres::Config = parsed
            .rest
            .parse()
            .map_err(|e: tokio_postgres::Error| TargetError::Url(e.to_string()))?;
        if let Some(p) = password {
            config.password(p.expose());
        }
        config.ssl_mode(tls.mode);
        // A peer that vanishes without closing (a dead host, a cut link) must not hang the
        // registry thread: connect and TCP timeouts, keepalives.
        config
            .connect_timeout(Duration::from_secs(5))
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30))
            .tcp_user_timeout(Duration::from_secs(15));
        if config.get_application_name().is_none() {
            config.application_name(format!("shiptoken {host}"));
        }
        Ok(PostgresTarget {
            shown: shown(url),
            config,
            host: host.to_string(),
            tls: tls.connector()?,
        })
    }
}

impl RegistryConfig {
    /// The PostgreSQL registry to open, with its password read now; `None` for SQLite.
    pub fn postgres(&self) -> Result<Option<PostgresTarget>, String> {
        let Some(url) = &self.url else {
            return Ok(None);
        };
        let password = self.password()?;
        PostgresTarget::new(url, password.as_ref(), &self.host_name)
            .map(Some)
            .map_err(|e| e.to_string())
    }
}

/// TLS as libpq's `sslmode` describes it, which is what operators expect of a URL:
/// `disable`; `allow`/`prefer` (the default) and `require` encrypt without checking the
/// server's certificate; `verify-ca` and `verify-full` check it against `sslrootcert` (a PEM
/// file) or the system's roots, and here both check the host name too.
struct Tls {
    mode: tokio_postgres::config::SslMode,
    verify: bool,
    root_cert: Option<PathBuf>,
}

impl Tls {
    fn connector(&self) -> Result<tokio_postgres_rustls::MakeRustlsConnect, TargetError> {
        use rustls_platform_verifier::BuilderVerifierExt;
        let tls_error = |e: rustls::Error| TargetError::Tls(e.to_string());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(tls_error)?;
        let config = match (&self.root_cert, self.verify) {
            (_, false) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Unverified(provider)))
                .with_no_client_auth(),
            (Some(file), true) => {
                use rustls::pki_types::pem::PemObject;
                let mut roots = rustls::RootCertStore::empty();
                let certs =
                    rustls::pki_types::CertificateDer::pem_file_iter(file).map_err(|e| {
                        TargetError::Tls(format!("sslrootcert {}: {e}", file.display()))
                    })?;
                for cert in certs {
                    let cert = cert.map_err(|e| {
                        TargetError::Tls(format!("sslrootcert {}: {e}", file.display()))
                    })?;
                    roots.add(cert).map_err(tls_error)?;
                }
                builder.with_root_certificates(roots).with_no_client_auth()
            }
            (None, true) => builder
                .with_platform_verifier()
                .map_err(tls_error)?
                .with_no_client_auth(),
        };
        Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
    }
}

/// `sslmode=prefer|require`: encrypted, the certificate not checked (as libpq does), the
/// handshake's signatures still are.
#[derive(Debug)]
struct Unverified(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
