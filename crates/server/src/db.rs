//! Database connections.

use anyhow::Context;
use tokio_postgres::Client;

use crate::config::DatabaseSettings;

/// Opens a connection; its driver task runs in the background. Errors say where it failed
/// (host, port, database, user) but never show the password.
pub(crate) async fn connect(settings: &DatabaseSettings) -> anyhow::Result<Client> {
    let ca = settings.ca_pem.as_ref().map(|pem| pem.as_bytes());
    orchestrator_contract::tls::connect(&settings.pg_config(), settings.sslmode, ca)
        .await
        .with_context(|| {
            format!(
                "cannot connect to database {:?} on {}:{} as {:?}",
                settings.name, settings.host, settings.port, settings.user
            )
        })
}

/// A connection that reconnects when the database went away (restart, failover).
pub(crate) struct Conn {
    settings: DatabaseSettings,
    client: Option<Client>,
}

impl Conn {
    /// Connects now.
    pub(crate) async fn open(settings: &DatabaseSettings) -> anyhow::Result<Self> {
        Ok(Self {
            settings: settings.clone(),
            client: Some(connect(settings).await?),
        })
    }

    /// The client, reconnecting first if the connection was closed.
    pub(crate) async fn get(&mut self) -> anyhow::Result<&mut Client> {
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            self.client = None;
            self.client = Some(connect(&self.settings).await?);
        }
        Ok(self.client.as_mut().expect("just connected"))
    }
}
