//! Connections of the state store: a [`tokio_postgres::Config`] built from a [`PgConfig`] (the
//! password set through the config API, never written into a connection string), TLS through
//! rustls as `sslmode` asks, and the password of a pgpass file when none is set.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::task::JoinHandle;
use tokio_postgres::Client;
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::connection::PgConfig;

/// How the server's certificate is checked, from `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verify {
    /// `disable`: no TLS.
    Off,
    /// `allow`, `prefer` (the default): TLS when the server offers it, its certificate not
    /// checked (as libpq does).
    Prefer,
    /// `require`: TLS or no connection, the certificate not checked (as libpq does without a
    /// root certificate).
    Require,
    /// `verify-ca`: TLS, the certificate chains to a trusted root; any name.
    Ca,
    /// `verify-full`: TLS, the certificate chains to a trusted root and names the host.
    Full,
}

impl Verify {
    /// The mode `sslmode` names; `Err` names the modes there are.
    pub(super) fn from_sslmode(mode: Option<&str>) -> Result<Self, String> {
        Ok(match mode.unwrap_or("prefer") {
            "disable" => Self::Off,
            "allow" | "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::Ca,
            "verify-full" => Self::Full,
            other => {
                return Err(format!(
                    "sslmode {other:?} is not one of disable, allow, prefer, require, verify-ca, \
                     verify-full"
                ));
            }
        })
    }
}

/// What opens the store's connections.
pub(super) struct Connector {
    config: PgConfig,
    verify: Verify,
    tls: Option<MakeRustlsConnect>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("config", &self.config)
            .field("verify", &self.verify)
            .finish_non_exhaustive()
    }
}

/// The crypto provider: ring, the one reqwest's rustls already builds in this workspace.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Connector {
    /// A connector for `config`; `root_cert` (PEM) replaces Mozilla's roots for `verify-ca` and
    /// `verify-full`.
    pub(super) fn new(config: PgConfig, root_cert: Option<&Path>) -> Result<Self, String> {
        let verify = Verify::from_sslmode(config.sslmode.as_deref())?;
        let tls = match verify {
            Verify::Off => None,
            Verify::Prefer | Verify::Require => Some(tls_config(Arc::new(NoCheck(
                provider().signature_verification_algorithms,
            )))?),
            Verify::Ca | Verify::Full => {
                let mut roots = RootCertStore::empty();
                match root_cert {
                    Some(path) => {
                        use rustls::pki_types::pem::PemObject;
                        let certs = CertificateDer::pem_file_iter(path).map_err(|e| {
                            format!("read the root certificates {}: {e}", path.display())
                        })?;
                        for cert in certs {
                            let cert = cert.map_err(|e| {
                                format!("read the root certificates {}: {e}", path.display())
                            })?;
                            roots.add(cert).map_err(|e| {
                                format!("a root certificate of {}: {e}", path.display())
                            })?;
                        }
                    }
                    None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
                }
                let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider(),
                )
                .build()
                .map_err(|e| format!("the root certificates: {e}"))?;
                Some(tls_config(Arc::new(Chain {
                    inner: webpki,
                    any_name: verify == Verify::Ca,
                }))?)
            }
        };
        Ok(Self {
            config,
            verify,
            tls,
        })
    }

    /// The settings, for messages (their `Display` and `Debug` never show the password).
    pub(super) fn config(&self) -> &PgConfig {
        &self.config
    }

    /// The client configuration. The password is set through [`tokio_postgres::Config::password`]
    /// and is in no string.
    fn client_config(&self, application: &str) -> tokio_postgres::Config {
        let c = &self.config;
        let mut pg = tokio_postgres::Config::new();
        pg.dbname(&c.dbname)
            .application_name(application)
            .connect_timeout(Duration::from_secs(10))
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30));
        let host = c.host.clone().unwrap_or_else(default_host);
        let unix = host.starts_with('/');
        if unix {
            pg.host_path(&host);
        } else {
            pg.host(&host);
        }
        let port = c.port.unwrap_or(5432);
        pg.port(port);
        let user = c.user.clone().unwrap_or_else(os_user);
        pg.user(&user);
        // libpq never uses TLS on a Unix socket.
        pg.ssl_mode(match self.verify {
            _ if unix => SslMode::Disable,
            Verify::Off => SslMode::Disable,
            Verify::Prefer => SslMode::Prefer,
            Verify::Require | Verify::Ca | Verify::Full => SslMode::Require,
        });
        match c.password() {
            Some(p) => {
                pg.password(p);
            }
            None => {
                let file = c.passfile.clone().or_else(default_passfile);
                let pg_host = if unix { "localhost" } else { host.as_str() };
                if let Some(p) = file.and_then(|f| {
                    pgpass_lookup(
                        &std::fs::read_to_string(f).ok()?,
                        pg_host,
                        port,
                        &c.dbname,
                        &user,
                    )
                }) {
                    pg.password(p);
                }
            }
        }
        pg
    }

    /// Open a connection named `application` (`pg_stat_activity.application_name`); the
    /// connection is driven by a task of its own, which ends when the connection does.
    pub(super) async fn connect(
        &self,
        application: &str,
    ) -> Result<(Client, JoinHandle<()>), tokio_postgres::Error> {
        let pg = self.client_config(application);
        let application = application.to_owned();
        match &self.tls {
            None => {
                let (client, connection) = pg.connect(tokio_postgres::NoTls).await?;
                let task = tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::debug!(target: "deploy", "state store connection {application} ended: {e}");
                    }
                });
                Ok((client, task))
            }
            Some(tls) => {
                let (client, connection) = pg.connect(tls.clone()).await?;
                let task = tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::debug!(target: "deploy", "state store connection {application} ended: {e}");
                    }
                });
                Ok((client, task))
            }
        }
    }
}

fn tls_config(verifier: Arc<dyn ServerCertVerifier>) -> Result<MakeRustlsConnect, String> {
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS settings: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// libpq's default when no host is set: the Unix socket directory of Debian's packages when it
/// exists, else `localhost`.
fn default_host() -> String {
    if Path::new("/var/run/postgresql").is_dir() {
        "/var/run/postgresql".to_owned()
    } else {
        "localhost".to_owned()
    }
}

/// libpq's default role: the operating-system user.
fn os_user() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "postgres".to_owned())
}

/// `~/.pgpass`, as libpq reads it when no passfile is named.
fn default_passfile() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".pgpass"))
}

/// The password a pgpass file (`host:port:database:user:password` lines, `*` matching anything,
/// `\:` and `\\` escaped) gives for this connection: the first line that matches.
pub(super) fn pgpass_lookup(
    text: &str,
    host: &str,
    port: u16,
    dbname: &str,
    user: &str,
) -> Option<String> {
    let port = port.to_string();
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .find_map(|line| {
            let mut fields = Vec::with_capacity(5);
            let mut cur = String::new();
            let mut chars = line.chars();
            while let Some(ch) = chars.next() {
                match ch {
                    '\\' => cur.extend(chars.next()),
                    ':' if fields.len() < 4 => fields.push(std::mem::take(&mut cur)),
                    c => cur.push(c),
                }
            }
            fields.push(cur);
            let [h, p, d, u, pw] = <[String; 5]>::try_from(fields).ok()?;
            let matches = |pat: &str, v: &str| pat == "*" || pat == v;
            (matches(&h, host) && matches(&p, &port) && matches(&d, dbname) && matches(&u, user))
                .then_some(pw)
        })
}

/// `prefer` and `require`: the channel is encrypted, the certificate is not checked (libpq's
/// meaning of these modes); the handshake's signatures still are, so the channel binding of
/// SCRAM-SHA-256-PLUS (which tokio-postgres uses when the server offers it) ties the password
/// exchange to this very channel.
#[derive(Debug)]
struct NoCheck(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for NoCheck {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
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
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// `verify-ca` and `verify-full`: the chain is checked against the roots; for `verify-ca` a
/// certificate for another name is accepted.
#[derive(Debug)]
struct Chain {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    any_name: bool,
}

impl ServerCertVerifier for Chain {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if self.any_name => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pgpass_lines_match_in_order_with_wildcards_and_escapes() {
        let file = "# comment\n\
                    db.example:5432:shop:app:first\n\
                    *:*:shop:*:any\\:one\\\\\n\
                    *:*:*:*:fallback\n";
        assert_eq!(
            pgpass_lookup(file, "db.example", 5432, "shop", "app").as_deref(),
            Some("first")
        );
        assert_eq!(
            pgpass_lookup(file, "other", 6543, "shop", "ops").as_deref(),
            Some("any:one\\")
        );
        assert_eq!(
            pgpass_lookup(file, "other", 1, "x", "y").as_deref(),
            Some("fallback")
        );
        assert_eq!(pgpass_lookup("h:1:d:u\n", "h", 1, "d", "u"), None);
    }

    #[test]
    fn sslmodes_are_libpqs() {
        assert_eq!(Verify::from_sslmode(None), Ok(Verify::Prefer));
        assert_eq!(Verify::from_sslmode(Some("disable")), Ok(Verify::Off));
        assert_eq!(Verify::from_sslmode(Some("require")), Ok(Verify::Require));
        assert_eq!(Verify::from_sslmode(Some("verify-ca")), Ok(Verify::Ca));
        assert_eq!(Verify::from_sslmode(Some("verify-full")), Ok(Verify::Full));
        assert!(Verify::from_sslmode(Some("bogus")).is_err());
    }
}
