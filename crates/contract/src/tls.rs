//! Connections with libpq's `sslmode` semantics, over rustls:
//!
//! | mode | TLS | certificate checked | host name checked |
//! |---|---|---|---|
//! | `disable` | never | | |
//! | `prefer` | when the server offers it | no | no |
//! | `require` | always | no | no |
//! | `verify-ca` | always | against the CA | no |
//! | `verify-full` | always | against the CA | yes |
//!
//! The CA is the PEM given (`ca.crt` of the credentials Secret) or else the system's roots.
//!
//! Channel binding (SCRAM-SHA-256-PLUS, libpq's `channel_binding`) is separate from the mode:
//! [`ChannelBinding::Require`] refuses every login that does not bind the session to the TLS
//! channel: cleartext and MD5 password authentication, SCRAM without binding, `trust`. It is
//! the default whenever the mode always uses TLS ([`ChannelBinding::default_for`]);
//! [`ChannelBinding::Prefer`] is the explicit opt-out for databases that cannot bind the
//! channel (poolers that end TLS, roles with MD5-stored passwords).

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_postgres::config::{ChannelBinding as PgChannelBinding, SslMode as PgSslMode};
use tokio_postgres::{AsyncMessage, Client, Config, Connection, NoTls, Notification};
use tokio_postgres_rustls::MakeRustlsConnect;

/// The `sslmode` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    /// Plain TCP.
    Disable,
    /// TLS when offered, unverified.
    Prefer,
    /// TLS, unverified.
    Require,
    /// TLS, certificate checked against the CA.
    VerifyCa,
    /// TLS, certificate and host name checked.
    VerifyFull,
}

/// Why a connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Unknown `sslmode`.
    #[error("sslmode {0:?} is not one of disable, prefer, require, verify-ca, verify-full")]
    UnknownMode(String),
    /// Unknown `channel_binding`.
    #[error("channel binding {0:?} is not one of prefer, require")]
    UnknownChannelBinding(String),
    /// Channel binding is required with a mode that never uses TLS.
    #[error("channel binding require needs TLS, and sslmode disable never uses it")]
    BindingWithoutTls,
    /// The CA or TLS settings are unusable.
    #[error("TLS setup: {0}")]
    Tls(String),
    /// Channel binding is required, and the server asked for a login that does not bind the
    /// channel (cleartext or MD5 password, SCRAM without `-PLUS`, `trust`), or offered no TLS.
    #[error(
        "the database did not bind the login to the TLS channel (it asked for cleartext, MD5 or unbound SCRAM authentication, or did not use TLS), and channel binding is required"
    )]
    Unbound,
    /// The server refused or could not be reached.
    #[error(transparent)]
    Postgres(#[from] tokio_postgres::Error),
}

impl std::str::FromStr for SslMode {
    type Err = ConnectError;
    fn from_str(s: &str) -> Result<Self, ConnectError> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => return Err(ConnectError::UnknownMode(other.into())),
        })
    }
}

/// The `channel_binding` values this contract knows (libpq's, less `disable`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelBinding {
    /// Bind the channel when the server offers SCRAM-SHA-256-PLUS over TLS; accept any other
    /// authentication the server asks for (SCRAM without binding, MD5, cleartext, `trust`).
    Prefer,
    /// Accept only SCRAM-SHA-256-PLUS bound to the TLS channel: a server that asks for another
    /// method, or a connection without TLS, is refused before the password is sent.
    Require,
}

impl ChannelBinding {
    /// The default for `mode`: [`ChannelBinding::Require`] when the mode always uses TLS
    /// (`require`, `verify-ca`, `verify-full`), else [`ChannelBinding::Prefer`] (`disable`
    /// already opts out of a protected connection; `prefer` may end up without TLS).
    pub fn default_for(mode: SslMode) -> Self {
        match mode {
            SslMode::Disable | SslMode::Prefer => ChannelBinding::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => ChannelBinding::Require,
        }
    }

    /// The value as libpq spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelBinding::Prefer => "prefer",
            ChannelBinding::Require => "require",
        }
    }
}

impl std::str::FromStr for ChannelBinding {
    type Err = ConnectError;
    fn from_str(s: &str) -> Result<Self, ConnectError> {
        Ok(match s {
            "prefer" => ChannelBinding::Prefer,
            "require" => ChannelBinding::Require,
            other => return Err(ConnectError::UnknownChannelBinding(other.into())),
        })
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Accepts any certificate but still checks the handshake signatures (libpq's `require`).
#[derive(Debug)]
struct Unverified(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
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

/// Checks the chain against the CA but not the host name (libpq's `verify-ca`).
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

fn roots(ca_pem: Option<&[u8]>) -> Result<RootCertStore, ConnectError> {
    let mut store = RootCertStore::empty();
    match ca_pem {
        Some(pem) => {
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| ConnectError::Tls(format!("the CA is not valid PEM: {e}")))?;
                store
                    .add(cert)
                    .map_err(|e| ConnectError::Tls(format!("the CA certificate is unusable: {e}")))?;
            }
            if store.is_empty() {
                return Err(ConnectError::Tls("the CA PEM holds no certificate".into()));
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = store.add(cert);
            }
        }
    }
    Ok(store)
}

fn client_config(mode: SslMode, ca_pem: Option<&[u8]>) -> Result<ClientConfig, ConnectError> {
    let provider = provider();
    let algorithms = provider.signature_verification_algorithms;
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ConnectError::Tls(e.to_string()))?;
    let verifier: Arc<dyn ServerCertVerifier> = match mode {
        SslMode::Disable | SslMode::Prefer | SslMode::Require => Arc::new(Unverified(algorithms)),
        SslMode::VerifyCa | SslMode::VerifyFull => {
            let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots(ca_pem)?), provider)
                .build()
                .map_err(|e| ConnectError::Tls(e.to_string()))?;
            if mode == SslMode::VerifyCa {
                Arc::new(ChainOnly(webpki))
            } else {
                webpki
            }
        }
    };
    Ok(builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

impl ConnectError {
    /// The error of a failed connection attempt: a failed TLS handshake (untrusted or misnamed
    /// certificate) becomes `Tls` with the cause, anything else stays `Postgres`.
    pub fn from_connect(error: tokio_postgres::Error) -> Self {
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            let inner = cause
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .map(|e| e as &dyn std::error::Error);
            if let Some(tls) = cause
                .downcast_ref::<rustls::Error>()
                .or_else(|| inner?.downcast_ref::<rustls::Error>())
            {
                return ConnectError::Tls(format!("TLS handshake with the database failed: {tls}"));
            }
            source = cause.source();
        }
        let unbound = std::error::Error::source(&error).is_some_and(|cause| cause.to_string() == UNBOUND);
        if unbound {
            return ConnectError::Unbound;
        }
        ConnectError::Postgres(error)
    }
}

/// How `tokio-postgres` says a login did not bind the channel that had to be bound (an
/// authentication error, without SQLSTATE).
const UNBOUND: &str = "server did not use channel binding";

/// Opens connections with one `sslmode` and `channel_binding`: the TLS settings are checked
/// and built once, when the connector is made, and reused by every connection (a connection
/// pool's connector).
#[derive(Clone)]
pub struct Connector {
    mode: SslMode,
    binding: ChannelBinding,
    tls: Option<MakeRustlsConnect>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("mode", &self.mode)
            .field("binding", &self.binding)
            .finish_non_exhaustive()
    }
}

impl Connector {
    /// A connector for `mode` with its default channel binding
    /// ([`ChannelBinding::default_for`]), with the CA `ca_pem` (PEM) for `verify-ca` and
    /// `verify-full` (else the system's roots). Fails when the CA or the TLS settings are
    /// unusable.
    pub fn new(mode: SslMode, ca_pem: Option<&[u8]>) -> Result<Self, ConnectError> {
        Self::with_binding(mode, ChannelBinding::default_for(mode), ca_pem)
    }

    /// A connector for `mode` and `binding`, see [`Connector::new`]. Fails also when `binding`
    /// is `Require` and `mode` is `disable`: no login could ever pass.
    pub fn with_binding(mode: SslMode, binding: ChannelBinding, ca_pem: Option<&[u8]>) -> Result<Self, ConnectError> {
        let tls = match mode {
            SslMode::Disable if binding == ChannelBinding::Require => return Err(ConnectError::BindingWithoutTls),
            SslMode::Disable => None,
            _ => Some(MakeRustlsConnect::new(client_config(mode, ca_pem)?)),
        };
        Ok(Self { mode, binding, tls })
    }

    /// Opens a connection and spawns its driver task; returns the client and the driver's
    /// handle. [`ConnectError::from_connect`] tells a TLS failure in the error apart.
    pub async fn open(&self, config: &Config) -> Result<(Client, JoinHandle<()>), tokio_postgres::Error> {
        self.open_with(config, None).await
    }

    /// [`Connector::open`], the driver sending the session's notifications to `sink` if any.
    async fn open_with(
        &self,
        config: &Config,
        sink: Option<mpsc::UnboundedSender<Notification>>,
    ) -> Result<(Client, JoinHandle<()>), tokio_postgres::Error> {
        let config = self.with_mode(config);
        match &self.tls {
            None => {
                let (client, connection) = config.connect(NoTls).await?;
                Ok((client, drive_notifications(connection, sink)))
            }
            Some(tls) => {
                let (client, connection) = config.connect(tls.clone()).await?;
                Ok((client, drive_notifications(connection, sink)))
            }
        }
    }

    /// A connector for a pool whose connections each `LISTEN` on [`crate::SERVER_CHANNEL`]
    /// as they open and send the notifications they receive to `sink`. The sink outlives
    /// the connections: one the pool opens again (after a database restart) listens again,
    /// though what was sent while none listened is lost.
    pub fn listening(self, sink: mpsc::UnboundedSender<Notification>) -> ListeningConnector {
        ListeningConnector { connector: self, sink }
    }

    /// Opens a connection whose driver runs in the background.
    pub async fn connect(&self, config: &Config) -> Result<Client, ConnectError> {
        let (client, _driver) = self.open(config).await.map_err(ConnectError::from_connect)?;
        Ok(client)
    }

    /// Opens a connection like [`Connector::connect`] whose background driver also hands over
    /// the notifications the session receives (after a `LISTEN`, see [`crate::listen`]), in
    /// the order they arrive. The receiver ends (`recv` answers `None`) once the connection is
    /// closed: the client was dropped, the server ended the session, or the connection failed;
    /// a listener then connects again and reads the table, since notifications sent meanwhile
    /// are lost. The channel is unbounded: its owner keeps reading it. Dropping the receiver
    /// does not close the connection.
    pub async fn connect_with_notifications(
        &self,
        config: &Config,
    ) -> Result<(Client, mpsc::UnboundedReceiver<Notification>), ConnectError> {
        let (sender, receiver) = mpsc::unbounded_channel();
        let (client, _driver) = self
            .open_with(config, Some(sender))
            .await
            .map_err(ConnectError::from_connect)?;
        Ok((client, receiver))
    }

    /// `config` with the `sslmode` and `channel_binding` of the connection attempt:
    /// verification is this connector's.
    fn with_mode(&self, config: &Config) -> Config {
        let mut config = config.clone();
        config.ssl_mode(match self.mode {
            SslMode::Disable => PgSslMode::Disable,
            SslMode::Prefer => PgSslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => PgSslMode::Require,
        });
        config.channel_binding(match self.binding {
            ChannelBinding::Prefer => PgChannelBinding::Prefer,
            ChannelBinding::Require => PgChannelBinding::Require,
        });
        config
    }
}

/// Runs a connection's driver in the background until the connection ends, forwarding its
/// notifications to `sink`, if any (a closed sink is no reason to close the connection).
fn drive_notifications<S, T>(
    mut connection: Connection<S, T>,
    sink: Option<mpsc::UnboundedSender<Notification>>,
) -> JoinHandle<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        // `poll_message` drives the connection (the client's queries too) as awaiting it would,
        // and yields what the server sends unasked.
        while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            match message {
                Ok(AsyncMessage::Notification(notification)) => {
                    if let Some(sink) = &sink {
                        let _ = sink.send(notification);
                    }
                }
                Ok(AsyncMessage::Notice(notice)) => {
                    tracing::info!("{}: {}", notice.severity(), notice.message());
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::debug!("database connection ended: {error}");
                    break;
                }
            }
        }
    })
}

/// Opens a connection with `mode`; the connection's driver runs in the background.
pub async fn connect(config: &Config, mode: SslMode, ca_pem: Option<&[u8]>) -> Result<Client, ConnectError> {
    Connector::new(mode, ca_pem)?.connect(config).await
}

/// Opens a connection with `mode` whose notifications arrive on the receiver, see
/// [`Connector::connect_with_notifications`].
pub async fn connect_with_notifications(
    config: &Config,
    mode: SslMode,
    ca_pem: Option<&[u8]>,
) -> Result<(Client, mpsc::UnboundedReceiver<Notification>), ConnectError> {
    Connector::new(mode, ca_pem)?.connect_with_notifications(config).await
}

/// A connector opens the connections of a `deadpool-postgres` pool with its `sslmode` and CA
/// (`Manager::from_connect`).
impl deadpool_postgres::Connect for Connector {
    fn connect(
        &self,
        config: &Config,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<(Client, JoinHandle<()>), tokio_postgres::Error>> + Send + '_>,
    > {
        let config = config.clone();
        Box::pin(async move { self.open(&config).await })
    }
}

/// A pool connector whose connections listen for server-row notifications, see
/// [`Connector::listening`].
#[derive(Debug)]
pub struct ListeningConnector {
    connector: Connector,
    sink: mpsc::UnboundedSender<Notification>,
}

impl deadpool_postgres::Connect for ListeningConnector {
    fn connect(
        &self,
        config: &Config,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<(Client, JoinHandle<()>), tokio_postgres::Error>> + Send + '_>,
    > {
        let config = config.clone();
        Box::pin(async move {
            let (client, driver) = self.connector.open_with(&config, Some(self.sink.clone())).await?;
            client.batch_execute(&crate::listen_statement()).await?;
            Ok((client, driver))
        })
    }
}
