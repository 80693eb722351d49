//! etcd (v3 API) implementation of the lease store.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions,
    Identity, PutOptions, TlsOptions, Txn, TxnOp, WatchOptions,
};
use futures::StreamExt;

use super::{Change, LeaseId, LeaseStore, Watch};
use crate::{Error, Result};

/// Bounds every etcd call, so an unreachable etcd surfaces as an error the
/// lease holder can act on instead of a hang.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
}

/// How a process proves itself to etcd: TLS (the CA of etcd's certificate,
/// and a client certificate for `--client-cert-auth`), and etcd's own user
/// authentication with the password read from a file (a mounted Secret),
/// never from a flag.
#[derive(Debug, Clone, Default)]
pub struct EtcdAccess {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub user: Option<String>,
    pub password_file: Option<PathBuf>,
}

impl EtcdAccess {
    fn options(&self, endpoints: &[String]) -> Result<ConnectOptions> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(REQUEST_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT)
            .with_keep_alive(Duration::from_secs(5), REQUEST_TIMEOUT);
        let https = endpoints.iter().any(|e| e.starts_with("https://"));
        match (&self.ca, https) {
            (Some(ca), true) => {
                let mut tls =
                    TlsOptions::new().ca_certificate(Certificate::from_pem(read(ca, "etcd CA")?));
                match (&self.cert, &self.key) {
                    (Some(cert), Some(key)) => {
                        tls = tls.identity(Identity::from_pem(
                            read(cert, "etcd client certificate")?,
                            read(key, "etcd client key")?,
                        ));
                    }
                    (None, None) => {}
                    _ => {
                        return Err(Error::Spec(
                            "the etcd client certificate and its key go together: give both, or neither".into(),
                        ));
                    }
                }
                options = options.with_tls(tls);
            }
            (None, true) => {
                return Err(Error::Spec(
                    "https:// etcd endpoints need the CA of etcd's certificate (--etcd-ca)".into(),
                ));
            }
            (Some(_), false) => {
                return Err(Error::Spec(
                    "TLS files were given for etcd but its endpoints are http://; use https://"
                        .into(),
                ));
            }
            (None, false) if self.cert.is_some() || self.key.is_some() => {
                return Err(Error::Spec(
                    "an etcd client certificate needs https:// endpoints and --etcd-ca".into(),
                ));
            }
            (None, false) => {}
        }
        match (&self.user, &self.password_file) {
            (Some(user), Some(file)) => {
                let password = std::fs::read_to_string(file).map_err(|source| Error::Io {
                    what: "cannot read the etcd password file",
                    path: file.clone(),
                    source,
                })?;
                options = options.with_user(user.clone(), password.trim_end_matches(['\n', '\r']));
            }
            (None, None) => {}
            _ => {
                return Err(Error::Spec(
                    "etcd authentication needs both --etcd-user and --etcd-password-file".into(),
                ));
            }
        }
        Ok(options)
    }
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::Io {
        what: match what {
            "etcd CA" => "cannot read the etcd CA",
            "etcd client certificate" => "cannot read the etcd client certificate",
            _ => "cannot read the etcd client key",
        },
        path: path.to_owned(),
        source,
    })
}

impl EtcdStore {
    pub async fn connect(endpoints: &[String]) -> Result<Self> {
        Self::connect_with(endpoints, &EtcdAccess::default()).await
    }

    pub async fn connect_with(endpoints: &[String], access: &EtcdAccess) -> Result<Self> {
        let options = access.options(endpoints)?;
        let client = Client::connect(endpoints, Some(options))
            .await
            .map_err(|e| {
                Error::LeaseStore(format!(
                    "cannot connect to etcd at {}: {e}; check --etcd and that etcd is running",
                    endpoints.join(",")
                ))
            })?;
        Ok(Self { client })
    }

    fn lost(lease: LeaseId, e: impl std::fmt::Display) -> Error {
        Error::LeaseLost {
            key: format!("etcd lease {:x}", lease.0),
            reason: e.to_string(),
        }
    }
}

fn is_lease_not_found(e: &etcd_client::Error) -> bool {
    e.to_string().contains("requested lease not found")
}

#[async_trait]
impl LeaseStore for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let resp = self.client.kv_client().get(key, None).await?;
        Ok(resp.kvs().first().map(|kv| kv.value().to_vec()))
    }

    async fn put(&self, key: &str, value: Vec<u8>) -> Result<()> {
        self.client.kv_client().put(key, value, None).await?;
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let options = GetOptions::new()
            .with_prefix()
            .with_sort(etcd_client::SortTarget::Key, etcd_client::SortOrder::Ascend);
        let resp = self.client.kv_client().get(prefix, Some(options)).await?;
        resp.kvs()
            .iter()
            .map(|kv| {
                let key = kv
                    .key_str()
                    .map_err(|e| Error::LeaseStore(format!("non-UTF-8 key under {prefix}: {e}")))?;
                Ok((key.to_owned(), kv.value().to_vec()))
            })
            .collect()
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.client.kv_client().delete(key, None).await?;
        Ok(())
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<()> {
        self.client
            .kv_client()
            .delete(prefix, Some(DeleteOptions::new().with_prefix()))
            .await?;
        Ok(())
    }

    async fn grant(&self, ttl: Duration) -> Result<LeaseId> {
        let seconds = i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        let resp = self.client.lease_client().grant(seconds, None).await?;
        Ok(LeaseId(resp.id()))
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<()> {
        let (mut keeper, mut responses) = self
            .client
            .lease_client()
            .keep_alive(lease.0)
            .await
            .map_err(|e| Self::lost(lease, e))?;
        keeper
            .keep_alive()
            .await
            .map_err(|e| Self::lost(lease, e))?;
        match responses.message().await {
            Ok(Some(resp)) if resp.ttl() > 0 => Ok(()),
            Ok(Some(_)) => Err(Self::lost(lease, "expired")),
            Ok(None) => Err(Self::lost(lease, "keep-alive stream closed")),
            Err(e) => Err(Self::lost(lease, e)),
        }
    }

    async fn revoke(&self, lease: LeaseId) -> Result<()> {
        match self.client.lease_client().revoke(lease.0).await {
            Ok(_) => Ok(()),
            Err(e) if is_lease_not_found(&e) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<bool> {
        let txn = Txn::new()
            .when(vec![Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then(vec![TxnOp::put(key, value, None)]);
        Ok(self.client.kv_client().txn(txn).await?.succeeded())
    }

    async fn create_leased(&self, key: &str, value: Vec<u8>, lease: LeaseId) -> Result<bool> {
        let txn = Txn::new()
            .when(vec![Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then(vec![TxnOp::put(
                key,
                value,
                Some(PutOptions::new().with_lease(lease.0)),
            )]);
        match self.client.kv_client().txn(txn).await {
            Ok(resp) => Ok(resp.succeeded()),
            Err(e) if is_lease_not_found(&e) => Err(Self::lost(lease, e)),
            Err(e) => Err(e.into()),
        }
    }

    async fn put_if_held(
        &self,
        guard: &str,
        lease: LeaseId,
        key: &str,
        value: Vec<u8>,
    ) -> Result<bool> {
        let txn = Txn::new()
            .when(vec![Compare::lease(guard, CompareOp::Equal, lease.0)])
            .and_then(vec![TxnOp::put(key, value, None)]);
        Ok(self.client.kv_client().txn(txn).await?.succeeded())
    }

    async fn swap(
        &self,
        key: &str,
        expected: &[u8],
        value: Vec<u8>,
        guard: Option<(&str, LeaseId)>,
    ) -> Result<bool> {
        let mut compares = vec![Compare::value(key, CompareOp::Equal, expected)];
        if let Some((guard, lease)) = guard {
            compares.push(Compare::lease(guard, CompareOp::Equal, lease.0));
        }
        let txn = Txn::new()
            .when(compares)
            .and_then(vec![TxnOp::put(key, value, None)]);
        Ok(self.client.kv_client().txn(txn).await?.succeeded())
    }

    async fn watch_prefix(&self, prefix: &str) -> Result<Watch> {
        let mut stream = self
            .client
            .watch_client()
            .watch(prefix, Some(WatchOptions::new().with_prefix()))
            .await?;
        // The first answer confirms the watch exists on the server: only
        // then is a following `list` sure not to miss a change.
        match stream.message().await? {
            Some(created) if created.created() && !created.canceled() => {}
            other => {
                return Err(Error::LeaseStore(format!(
                    "etcd did not open a watch on {prefix}: {other:?}"
                )));
            }
        }
        let changes = futures::stream::unfold(stream, |mut stream| async move {
            let response = match stream.message().await {
                Ok(Some(response)) => response,
                Ok(None) => return None,
                Err(e) => return Some((vec![Err(Error::from(e))], stream)),
            };
            if response.canceled() {
                // Compacted past where the watch stood: changes were lost.
                let reason = response.cancel_reason().to_owned();
                return Some((
                    vec![
                        Ok(Change::Missed),
                        Err(Error::LeaseStore(format!("etcd ended the watch: {reason}"))),
                    ],
                    stream,
                ));
            }
            let changes = response
                .events()
                .iter()
                .filter_map(|event| {
                    let kv = event.kv()?;
                    let key = kv.key_str().ok()?.to_owned();
                    Some(Ok(match event.event_type() {
                        EventType::Put => Change::Put {
                            key,
                            value: kv.value().to_vec(),
                        },
                        EventType::Delete => Change::Delete { key },
                    }))
                })
                .collect::<Vec<_>>();
            Some((changes, stream))
        })
        .flat_map(futures::stream::iter);
        Ok(Box::pin(changes))
    }
}
