//! The staging area: where sealed chunks and the job's wrapped data key are
//! kept, in a local directory or S3-compatible storage chosen by URL. Owns
//! the object layout; never sees plaintext rows.

use std::sync::Arc;

use bytes::Bytes;
use godwit_proto::v1::WrappedKey;
use object_store::aws::AmazonS3Builder;
use object_store::buffered::BufWriter;
use object_store::local::LocalFileSystem;
pub use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use prost::Message;
use tokio::io::AsyncWriteExt;

use crate::chunk::ChunkId;
use crate::ids::JobId;
use crate::keys::DataKey;
use crate::state::Manifest;
use crate::{Error, Result};

/// Chunks above this size go up as multipart uploads.
const MULTIPART_THRESHOLD: usize = 8 * 1024 * 1024;

#[derive(Clone)]
pub struct Staging {
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    url: String,
}

impl std::fmt::Debug for Staging {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Staging")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Staging {
    /// `file:///dir` (created if missing) or `s3://bucket/prefix`; S3 endpoint,
    /// region and credentials come from the standard `AWS_*` environment
    /// variables (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, …).
    pub fn open(url: &str) -> Result<Self> {
        let parsed = url::Url::parse(url)
            .map_err(|e| Error::Spec(format!("`staging` {url:?} is not a URL: {e}")))?;
        match parsed.scheme() {
            "file" => {
                let dir = parsed.to_file_path().map_err(|_| {
                    Error::Spec(format!(
                        "`staging` {url:?} is not an absolute file:/// path"
                    ))
                })?;
                std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
                    what: "cannot create staging directory",
                    path: dir.clone(),
                    source,
                })?;
                let store =
                    LocalFileSystem::new_with_prefix(&dir).map_err(|source| Error::Staging {
                        location: url.to_owned(),
                        source,
                    })?;
                Ok(Self {
                    store: Arc::new(store),
                    prefix: ObjectPath::default(),
                    url: url.to_owned(),
                })
            }
            "s3" => {
                let bucket = parsed.host_str().filter(|b| !b.is_empty()).ok_or_else(|| {
                    Error::Spec(format!(
                        "`staging` {url:?} names no bucket: use s3://bucket/prefix"
                    ))
                })?;
                let store = AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .build()
                    .map_err(|source| Error::Staging {
                        location: url.to_owned(),
                        source,
                    })?;
                Ok(Self {
                    store: Arc::new(store),
                    prefix: ObjectPath::from(parsed.path().trim_matches('/')),
                    url: url.to_owned(),
                })
            }
            other => Err(Error::Spec(format!(
                "`staging` scheme {other:?} is not supported: use file:///dir or s3://bucket/prefix"
            ))),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn job_root(&self, job: &JobId) -> ObjectPath {
        self.prefix.clone().join(job.as_str())
    }

    pub fn chunk_path(&self, job: &JobId, table: &str, partition: u32, seq: u64) -> ObjectPath {
        self.job_root(job)
            .join("chunks")
            .join(table)
            .join(format!("{partition:06}"))
            .join(format!("{seq:08}.gwc"))
    }

    /// A sealed schema dump file of the job.
    pub fn schema_path(&self, job: &JobId, name: &str) -> ObjectPath {
        self.job_root(job)
            .join("schema")
            .join(format!("{name}.gwc"))
    }

    /// A sealed segment of streamed changes as read from the slot: named
    /// by where the read began and its number within the read, so the
    /// segments list in slot order.
    pub fn change_path(&self, job: &JobId, read_from: u64, segment: u32) -> ObjectPath {
        self.job_root(job)
            .join("changes")
            .join(format!("{read_from:016X}-{segment:06}.gwc"))
    }

    /// The job's latest verification report, sealed: it names primary keys.
    /// The job's sealed history: what its debrief draws.
    pub fn history_path(&self, job: &JobId) -> ObjectPath {
        self.job_root(job).join("reports").join("history.gwc")
    }

    pub fn report_path(&self, job: &JobId) -> ObjectPath {
        self.job_root(job).join("reports").join("verification.gwc")
    }

    /// The sealed finding of one range of a verification run that differed.
    pub fn finding_path(&self, job: &JobId, run: &str, range: u32) -> ObjectPath {
        self.job_root(job)
            .join("reports")
            .join("ranges")
            .join(run)
            .join(format!("{range:06}.gwc"))
    }

    fn manifest_path(&self, job: &JobId) -> ObjectPath {
        self.job_root(job).join("manifest.gwc")
    }

    /// Seals the manifest with the job's data key: its table, partition and
    /// column lists become SQL on replay, so they are trusted only once
    /// authenticated.
    pub async fn put_manifest(&self, manifest: &Manifest, key: &DataKey) -> Result<()> {
        let bytes = serde_json::to_vec(manifest).map_err(|e| Error::Corrupt {
            what: "manifest".into(),
            reason: e.to_string(),
        })?;
        let frame = crate::chunk::seal(&ChunkId::manifest(manifest.job.as_str()), 0, &bytes, key)?;
        self.put(&self.manifest_path(&manifest.job), frame).await
    }

    /// The manifest of a job whose copy finished, if there is one; a
    /// manifest that fails authentication (modified, truncated, another
    /// job's) is refused naming the object.
    pub async fn get_manifest(&self, job: &JobId, key: &DataKey) -> Result<Option<Manifest>> {
        let path = self.manifest_path(job);
        let frame = match self.store.get(&path).await {
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(source) => {
                return Err(Error::Staging {
                    location: self.describe(&path),
                    source,
                });
            }
            Ok(result) => result.bytes().await.map_err(|source| Error::Staging {
                location: self.describe(&path),
                source,
            })?,
        };
        let object = self.describe(&path);
        let (_, plain) =
            crate::chunk::open(&object, &frame, &ChunkId::manifest(job.as_str()), key)?;
        let manifest: Manifest = serde_json::from_slice(&plain).map_err(|e| Error::Corrupt {
            what: format!("manifest {object}"),
            reason: e.to_string(),
        })?;
        if &manifest.job != job {
            return Err(Error::ChunkRejected {
                object,
                reason: format!("it describes job {}, not {job}", manifest.job),
            });
        }
        Ok(Some(manifest))
    }

    /// Full location of an object, for error messages.
    pub fn describe(&self, path: &ObjectPath) -> String {
        format!("{}/{path}", self.url.trim_end_matches('/'))
    }

    fn key_path(&self, job: &JobId) -> ObjectPath {
        self.job_root(job).join("data-key.pb")
    }

    /// An object directly under the job's root.
    /// Where the job's audit key is staged, wrapped like its data key.
    pub fn audit_key_path(&self, job: &JobId) -> ObjectPath {
        self.job_object(job, "audit-key.pb")
    }

    /// Where the job's audit records are staged (kept by a purge).
    pub fn audit_records_root(&self, job: &JobId) -> ObjectPath {
        self.job_object(job, "audit")
    }

    pub fn job_object(&self, job: &JobId, name: &str) -> ObjectPath {
        self.job_root(job).join(name)
    }

    /// Every object under `prefix`, in name order.
    pub async fn list_objects(&self, prefix: &ObjectPath) -> Result<Vec<ObjectPath>> {
        use futures::TryStreamExt;
        let mut objects: Vec<ObjectPath> = self
            .store
            .list(Some(prefix))
            .map_ok(|meta| meta.location)
            .try_collect()
            .await
            .map_err(|source| Error::Staging {
                location: self.describe(prefix),
                source,
            })?;
        objects.sort();
        Ok(objects)
    }

    /// A wrapped key stored at `path`, if there is one.
    pub async fn get_key_object(&self, path: &ObjectPath) -> Result<Option<WrappedKey>> {
        match self.store.get(path).await {
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(source) => Err(Error::Staging {
                location: self.describe(path),
                source,
            }),
            Ok(result) => {
                let bytes = result.bytes().await.map_err(|source| Error::Staging {
                    location: self.describe(path),
                    source,
                })?;
                WrappedKey::decode(bytes)
                    .map(Some)
                    .map_err(|e| Error::Corrupt {
                        what: format!("wrapped key {}", self.describe(path)),
                        reason: e.to_string(),
                    })
            }
        }
    }

    pub async fn put_key_object(&self, path: &ObjectPath, wrapped: &WrappedKey) -> Result<()> {
        self.put(path, wrapped.encode_to_vec()).await
    }

    /// Stores `wrapped` at `path` unless a key is there already, in one
    /// step where the store can (so two processes starting together keep
    /// one key); returns the key that is there now.
    pub async fn put_key_object_if_absent(
        &self,
        path: &ObjectPath,
        wrapped: &WrappedKey,
    ) -> Result<WrappedKey> {
        let created = self
            .store
            .put_opts(
                path,
                Bytes::from(wrapped.encode_to_vec()).into(),
                object_store::PutMode::Create.into(),
            )
            .await;
        match created {
            Ok(_) => Ok(wrapped.clone()),
            Err(object_store::Error::AlreadyExists { .. }) => self
                .get_key_object(path)
                .await?
                .ok_or_else(|| Error::Corrupt {
                    what: format!("wrapped key {}", self.describe(path)),
                    reason: "it exists and cannot be read".into(),
                }),
            Err(object_store::Error::NotImplemented { .. }) => {
                self.put_key_object(path, wrapped).await?;
                Ok(wrapped.clone())
            }
            Err(source) => Err(Error::Staging {
                location: self.describe(path),
                source,
            }),
        }
    }

    pub async fn put(&self, path: &ObjectPath, bytes: Vec<u8>) -> Result<()> {
        let location = || format!("{}/{path}", self.url);
        if bytes.len() <= MULTIPART_THRESHOLD {
            self.store
                .put(path, Bytes::from(bytes).into())
                .await
                .map_err(|source| Error::Staging {
                    location: location(),
                    source,
                })?;
            return Ok(());
        }
        let mut writer =
            BufWriter::with_capacity(self.store.clone(), path.clone(), MULTIPART_THRESHOLD);
        let io = |e: std::io::Error| Error::Staging {
            location: location(),
            source: object_store::Error::Generic {
                store: "staging",
                source: Box::new(e),
            },
        };
        writer.write_all(&bytes).await.map_err(io)?;
        writer.shutdown().await.map_err(io)?;
        Ok(())
    }

    pub async fn get(&self, path: &ObjectPath) -> Result<Bytes> {
        let location = || format!("{}/{path}", self.url);
        let result = self
            .store
            .get(path)
            .await
            .map_err(|source| Error::Staging {
                location: location(),
                source,
            })?;
        result.bytes().await.map_err(|source| Error::Staging {
            location: location(),
            source,
        })
    }

    /// Stores the job's wrapped data key beside its chunks, so staged data can
    /// be replayed with nothing but the staging area and the KEK.
    pub async fn put_wrapped_key(&self, job: &JobId, wrapped: &WrappedKey) -> Result<()> {
        self.put_key_object(&self.key_path(job), wrapped).await
    }

    /// Destroys the job's only wrapped data key: what it sealed (chunks,
    /// change batches, reports) can no longer be opened by anyone.
    pub async fn delete_wrapped_key(&self, job: &JobId) -> Result<()> {
        let path = self.key_path(job);
        match self.store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(source) => Err(Error::Staging {
                location: self.describe(&path),
                source,
            }),
        }
    }

    /// Deletes every staged object of the job but its audit trail (which
    /// must outlive the data it proves), the data key last: returns how many
    /// objects were deleted.
    pub async fn purge_job(&self, job: &JobId) -> Result<usize> {
        let objects = self.list_objects(&self.job_root(job)).await?;
        let key = self.key_path(job);
        let audit_records = self.audit_records_root(job);
        let audit_key = self.audit_key_path(job);
        let purged: Vec<&ObjectPath> = objects
            .iter()
            .filter(|p| **p != audit_key && !p.prefix_matches(&audit_records))
            .collect();
        for path in purged.iter().copied().filter(|p| **p != key) {
            match self.store.delete(path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(source) => {
                    return Err(Error::Staging {
                        location: self.describe(path),
                        source,
                    });
                }
            }
        }
        self.delete_wrapped_key(job).await?;
        Ok(purged.len())
    }

    pub async fn get_wrapped_key(&self, job: &JobId) -> Result<Option<WrappedKey>> {
        self.get_key_object(&self.key_path(job)).await
    }
}
